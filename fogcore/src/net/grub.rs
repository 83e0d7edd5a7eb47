//! The signed chain for Secure Boot: firmware -> shim (signed by Microsoft's UEFI CA) -> GRUB
//! (signed by the distribution, checked by shim) -> the signed kernel (checked by GRUB through
//! shim). GRUB is the chain's only programmable stage, so the node writes its configuration per
//! host, as it writes iPXE scripts: the agent's boot environment for a host with a task, the
//! menu otherwise.
//!
//! GRUB's network image reads `grub/grub.cfg` from the TFTP server it came from (Debian's 2.06
//! does not ask by MAC first). [`GrubConfigs`] answers it with a config that loads
//! `grub/mac/$net_default_mac` (the MAC GRUB booted from), which it answers per host from the
//! node's [`BootScripts`], as it answers the `grub/grub.cfg-01-<mac>` newer GRUBs ask for. The
//! kernel and initramfs come over TFTP from the same root.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::net::http::{AGENT_ITEMS, AgentArgs, AgentFiles, BootScripts, DefaultMenu, format_mac, one_line};
use crate::net::tftp::VirtualFiles;

/// Where GRUB's network image looks for its configuration, under the TFTP root.
pub const CONFIG_DIR: &str = "grub";

/// `word` as one GRUB word, taken literally: single quotes, a quote inside written `'\''`.
pub fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The MAC of a per-host config path (`grub/mac/52:54:00:12:34:56`, or the
/// `grub/grub.cfg-01-52-54-00-12-34-56` newer GRUBs try first), if `path` is one.
fn mac_of_config_path(path: &str) -> Option<[u8; 6]> {
    let rest = path.strip_prefix(CONFIG_DIR)?;
    let name = rest
        .strip_prefix("/mac/")
        .or_else(|| rest.strip_prefix("/grub.cfg-01-"))?;
    crate::net::http::parse_mac(name).filter(|_| name.len() == 17)
}

/// `grub/grub.cfg`: load this machine's config by the MAC GRUB booted from; the menu when that
/// fails (no MAC known).
fn loader_config(menu: &str) -> String {
    format!(
        "# fog: this machine's config from its node, by the MAC it booted from\n\
         if [ -n \"$net_default_mac\" ]; then configfile \"/{CONFIG_DIR}/mac/$net_default_mac\"; fi\n\
         {menu}"
    )
}

/// Lines common to every config: whether Secure Boot is on (shim's verifier is active only then)
/// in `$fog_secure_boot`, echoed to the console.
fn header(what: &str) -> String {
    format!(
        "# fog: {what}\n\
         set fog_secure_boot=off\n\
         if [ \"$shim_lock\" = y ]; then set fog_secure_boot=on; fi\n\
         echo \"fog: Secure Boot is $fog_secure_boot\"\n"
    )
}

/// GRUB lines that boot the environment with `args`: kernel and initramfs from the TFTP root
/// (GRUB's `$root` is the server it was loaded from; Debian's GRUB has no HTTP under Secure
/// Boot). The `initrd=` argument iPXE passes is left out: GRUB hands the initramfs over itself.
/// When the boot fails (no boot environment on the node, or a kernel the chain refuses) they say
/// so and reboot after `wait_secs`, to ask the node again from PXE: GRUB cannot try a second
/// kernel in one session (it faults under Secure Boot).
pub fn boot_lines(files: &AgentFiles, args: &AgentArgs, wait_secs: u32) -> String {
    let words: Vec<String> = files.fog_args(args).split_whitespace().map(quote).collect();
    // The console cuts lines at ~79 columns: the message is two lines.
    format!(
        "linux /{kernel} {words}\n\
         initrd /{initrd}\n\
         boot\n\
         echo {failed}\n\
         echo 'fog: is it built on this node, and signed? rebooting in {wait_secs} s'\n\
         sleep {wait_secs}\n\
         reboot\n",
        kernel = files.kernel.trim_start_matches('/'),
        initrd = files.initrd.trim_start_matches('/'),
        words = words.join(" "),
        failed = quote(&format!(
            "fog: cannot boot the agent from /{}",
            files.kernel.trim_start_matches('/')
        )),
    )
}

/// The config of a host with a task: boot the agent at once.
pub fn agent_config(files: &AgentFiles, args: &AgentArgs, what: &str) -> String {
    format!(
        "{header}\
         echo {loading}\n\
         {boot}",
        header = header(&one_line(what)),
        loading = quote(&format!("fog: {}; loading the agent", one_line(what))),
        boot = boot_lines(files, args, 30),
    )
}

/// The local disk's boot loader: Windows Boot Manager, else the removable-media path every
/// installed system keeps, on the first disk that has it (chainloaded, so Secure Boot checks
/// it). `exit` would leave OVMF, and some firmwares, in their setup screen, not at the next boot
/// entry; it is the last resort.
const LOCAL_DISK: &str = "  echo 'Booting from the local disk'\n\
  for loader in /EFI/Microsoft/Boot/bootmgfw.efi /EFI/BOOT/BOOTX64.EFI; do\n\
    if search --no-floppy --file --set=root \"$loader\"; then\n\
      chainloader \"$loader\"\n\
      boot\n\
    fi\n\
  done\n\
  exit\n";

/// The menu as GRUB shows it: the same items as iPXE's (local disk by default after the
/// timeout, the boot environment's items with `fog.master` = `base`), and Secure Boot's state.
pub fn menu_config(menu: &DefaultMenu, mac: Option<[u8; 6]>, base: &str) -> String {
    let (agent, default_item) = menu.agent_and_default(base);
    let who = mac.map_or_else(|| "this machine".to_string(), format_mac);
    let mut out = header(&format!("boot menu for {who}"));
    out.push_str(&format!(
        "set timeout={}\n\
         set default={default_item}\n\
         menuentry 'Boot from the local disk' --id local {{\n\
         {LOCAL_DISK}\
         }}\n",
        menu.timeout_ms.div_ceil(1000),
    ));
    if let Some(files) = agent {
        for (label, text, action) in AGENT_ITEMS {
            let args = AgentArgs {
                master: base.trim_end_matches('/').to_string(),
                action: action.to_string(),
                mac: mac.map(format_mac),
                ..AgentArgs::default()
            };
            let lines: String = boot_lines(files, &args, 10)
                .lines()
                .map(|l| format!("  {l}\n"))
                .collect();
            out.push_str(&format!(
                "menuentry {title} --id {label} {{\n  echo {echo}\n{lines}}}\n",
                title = quote(text),
                echo = quote(&format!("fog: {text}")),
            ));
        }
    }
    out.push_str(
        "menuentry \"Secure Boot: $fog_secure_boot (fog boot menu)\" --id info {\n  true\n}\n\
         menuentry 'Reboot' --id reboot {\n  reboot\n}\n",
    );
    out
}

/// TFTP's `grub/grub.cfg` (loads the next by MAC), `grub/mac/<mac>` and `grub/grub.cfg-01-<mac>`
/// (that host's config from the node's [`BootScripts`]).
pub struct GrubConfigs {
    /// The node's per-host boot decisions.
    pub scripts: Arc<dyn BootScripts>,
    /// The node's HTTP base (`http://10.99.0.1:8080`), where the agent talks to.
    pub base: String,
}

impl VirtualFiles for GrubConfigs {
    fn open(&self, path: &str, client: SocketAddr) -> Option<bytes::Bytes> {
        let config = if path == format!("{CONFIG_DIR}/grub.cfg") {
            loader_config(&self.scripts.grub_menu(&self.base))
        } else {
            let mac = mac_of_config_path(path)?;
            tracing::info!(mac = %format_mac(mac), %client, "boot: signed chain: GRUB asks for its config");
            self.scripts.grub_config(mac, &self.base)
        };
        Some(bytes::Bytes::from(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    #[test]
    fn quoting_keeps_each_word_literal() {
        assert_eq!(quote("fog.master=http://x:8080"), "'fog.master=http://x:8080'");
        assert_eq!(quote("a'b"), r"'a'\''b'");
        assert_eq!(quote("$x;reboot"), "'$x;reboot'");
    }

    #[test]
    fn config_paths_name_the_mac() {
        assert_eq!(mac_of_config_path("grub/mac/52:54:00:12:34:56"), Some(MAC));
        assert_eq!(mac_of_config_path("grub/grub.cfg-01-52-54-00-12-34-56"), Some(MAC));
        assert_eq!(mac_of_config_path("grub/mac/"), None);
        assert_eq!(mac_of_config_path("grub/grub.cfg-01-525400123456"), None);
        assert_eq!(mac_of_config_path("grub/grub.cfg"), None);
        assert_eq!(mac_of_config_path("other/grub.cfg-01-52-54-00-12-34-56"), None);
    }

    #[test]
    fn the_agent_boots_with_each_argument_quoted() {
        let args = AgentArgs {
            master: "http://10.99.0.1:8080".into(),
            task: Some(7),
            action: "deploy".into(),
            token: Some("fogt_7_x".into()),
            image: Some("it's $bad; reboot".into()),
            ..AgentArgs::default()
        };
        let config = agent_config(&AgentFiles::default(), &args, "task 7: deploy on pc-01");
        let linux = config.lines().find(|l| l.starts_with("linux ")).unwrap_or_default();
        assert_eq!(
            linux,
            r"linux /bootenv/vmlinuz 'console=tty0' 'console=ttyS0,115200n8' 'fog.master=http://10.99.0.1:8080' 'fog.task=7' 'fog.action=deploy' 'fog.token=fogt_7_x' 'fog.image=it'\''s' '$bad;' 'reboot'"
        );
        assert!(config.contains("\ninitrd /bootenv/initrd.img\nboot\necho 'fog: cannot boot the agent"));
        assert!(
            config.ends_with("sleep 30\nreboot\n"),
            "a failed boot starts over from PXE"
        );
        assert_eq!(config.matches("linux ").count(), 1, "one kernel per GRUB session");
        assert!(!config.contains("initrd=initrd.img"));
    }

    #[test]
    fn tftp_serves_the_loader_and_each_hosts_config() {
        let configs = GrubConfigs {
            scripts: Arc::new(DefaultMenu::default()),
            base: "http://10.99.0.1:8080".into(),
        };
        let client: SocketAddr = "10.99.0.100:1024".parse().expect("addr");
        let text = |path: &str| {
            configs
                .open(path, client)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        let loader = text("grub/grub.cfg").unwrap_or_default();
        assert!(loader.starts_with("# fog: this machine's config"));
        assert!(loader.contains("configfile \"/grub/mac/$net_default_mac\""));
        assert!(loader.contains("--id local "), "the menu when no MAC is known");
        let host = text("grub/mac/52:54:00:12:34:56").unwrap_or_default();
        assert!(host.contains("'fog.mac=52:54:00:12:34:56'"), "{host}");
        assert_eq!(text("grub/grub.cfg-01-52-54-00-12-34-56"), Some(host));
        assert_eq!(text("grub/mac/nonsense"), None);
        assert_eq!(text("grub/x86_64-efi/command.lst"), None);
    }

    #[test]
    fn the_menu_defaults_to_the_local_disk() {
        let config = menu_config(&DefaultMenu::default(), Some(MAC), "http://10.99.0.1:8080");
        assert!(config.contains("set timeout=5\nset default=local\n"));
        for (label, _, action) in AGENT_ITEMS {
            let entry = config.split(&format!("--id {label} {{\n")).nth(1).unwrap_or_default();
            let linux = entry
                .lines()
                .find(|l| l.trim_start().starts_with("linux "))
                .unwrap_or_default();
            assert!(linux.contains(&format!("'fog.action={action}'")), "{label}: {linux}");
            assert!(linux.contains("'fog.mac=52:54:00:12:34:56'"), "{label}: {linux}");
            assert!(!linux.contains("fog.token"), "the menu gives no token");
        }
        assert!(config.contains("Secure Boot: $fog_secure_boot"));
        let plain = menu_config(&DefaultMenu::default(), None, "");
        assert!(!plain.contains("linux ") && plain.contains("--id local "));
    }
}
