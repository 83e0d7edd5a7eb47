//! The inventory: hosts, groups, images, nodes, tasks and schedules, as serde types with the
//! checks every write goes through. Records refer to each other by name (names never change), so
//! a task's history still reads after its host is gone.

use std::net::Ipv4Addr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::imaging::resize::LayoutMode;
use crate::names::Mac;
pub use crate::names::check_name;
use crate::names::{MAC_PATTERN, NAME_PATTERN};

/// A UUID as [`canonical_uuid`] reads it.
const UUID_PATTERN: &str = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$";
/// A cron line's shape: five fields of digits, `*`, `,`, `-`, `/`.
const CRON_PATTERN: &str = r"^\s*[0-9*,/-]+(\s+[0-9*,/-]+){4}\s*$";
/// No line break.
const ONE_LINE: &str = r"^[^\r\n]*$";
/// What [`Node::validate`] takes as a URL.
const URL_PATTERN: &str = r"^https?://[!-~]+$";
use crate::net::dhcp::config::Subnet;

/// A task id.
pub type TaskId = i64;

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = crate::clock::Millis;

/// A machine fog images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Unique name (letters, digits, `.`, `-`, `_`).
    #[schemars(pattern(NAME_PATTERN))]
    pub name: String,
    /// Its network cards, written `52:54:00:12:34:56` (at least one; any MAC belongs to one host).
    #[schemars(length(min = 1), inner(pattern(MAC_PATTERN)), extend("uniqueItems" = true))]
    pub macs: Vec<String>,
    /// SMBIOS UUID, when known.
    #[serde(default)]
    #[schemars(pattern(UUID_PATTERN))]
    pub uuid: Option<String>,
    /// Its IPv4 address, when known: picks the node whose subnet holds it.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// The image deployed to it by default.
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub image: Option<String>,
    /// The group it belongs to.
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub group: Option<String>,
    /// The node that images it (else the node whose subnet holds `address`).
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub node: Option<String>,
    /// Which disk the agent images (`/dev/nvme0n1`, `size:largest`, ...); else the only fixed disk.
    #[serde(default)]
    pub primary_disk: Option<String>,
    /// Extra kernel arguments for the agent's boot (one line).
    #[serde(default)]
    #[schemars(pattern(ONE_LINE))]
    pub kernel_args: String,
    /// What the agent found (DMI, CPU, memory, disks, NICs), as reported.
    #[serde(default)]
    pub inventory: serde_json::Value,
    /// How its deploys lay the image's partitions out, unless a task says otherwise.
    #[serde(default)]
    #[schemars(with = "LayoutModeSchema")]
    pub layout: LayoutMode,
}

impl Host {
    /// A host of this name and these MACs, nothing else known about it yet.
    pub fn new(name: impl Into<String>, macs: Vec<String>) -> Host {
        Host {
            name: name.into(),
            macs,
            uuid: None,
            address: None,
            image: None,
            group: None,
            node: None,
            primary_disk: None,
            kernel_args: String::new(),
            inventory: serde_json::Value::Null,
            layout: LayoutMode::default(),
        }
    }

    /// Checks every field and puts MACs and the UUID in canonical form (lower case, `:`).
    pub fn validate(&mut self) -> Result<()> {
        check_name("host name", &self.name)?;
        if self.macs.is_empty() {
            return Err(Error::invalid("mac", "", "a host needs at least one MAC"));
        }
        let mut macs = Vec::with_capacity(self.macs.len());
        for mac in &self.macs {
            let mac = canonical_mac(mac)?;
            if macs.contains(&mac) {
                return Err(Error::unprocessable("mac", mac, "listed twice"));
            }
            macs.push(mac);
        }
        self.macs = macs;
        if let Some(uuid) = &self.uuid {
            self.uuid = Some(canonical_uuid(uuid)?);
        }
        for (field, value) in [
            ("image name", &self.image),
            ("group name", &self.group),
            ("node name", &self.node),
        ] {
            if let Some(value) = value {
                check_name(field, value)?;
            }
        }
        if self.kernel_args.contains(['\n', '\r']) {
            return Err(Error::invalid("kernel args", &self.kernel_args, "must be one line"));
        }
        Ok(())
    }
}

// The document's description of `LayoutMode` (which lives beside deploy, without a schema): the
// same names, checked against it by a test.
/// How a deploy lays the image's partitions out on a disk of another size.
#[derive(JsonSchema)]
#[schemars(rename = "LayoutMode")]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // only its schema is used
enum LayoutModeSchema {
    /// Partitions that must keep their size keep it (EFI system, Microsoft reserved, recovery,
    /// BIOS boot, swap, filesystems fog cannot resize); the others share the target's space in
    /// proportion to their source sizes, their filesystems grown or shrunk to fit.
    Fit,
    /// The source's partition table as it was (only the backup GPT moves to the target's end).
    Exact,
}

/// A set of hosts imaged together (by `host.group`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Unique name.
    #[schemars(pattern(NAME_PATTERN))]
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

impl Group {
    /// Checks the name.
    pub fn validate(&self) -> Result<()> {
        check_name("group name", &self.name)
    }
}

/// Which nodes keep a copy of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
// No deny_unknown_fields: serde cannot refuse extra fields beside a unit variant's tag, and the
// document must say what is accepted.
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Placement {
    /// Every node.
    #[default]
    All,
    /// Only these nodes.
    Nodes {
        /// Node names.
        #[schemars(inner(pattern(NAME_PATTERN)))]
        nodes: Vec<String>,
    },
}

/// An image's record on the master (its chunks live in the nodes' stores).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Unique name, as in the store.
    #[schemars(pattern(NAME_PATTERN))]
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Operating system, free text (`windows-11`, `debian-13`).
    #[serde(default)]
    pub os: String,
    /// Bytes of the image's partitions' used data, once captured.
    #[serde(default)]
    pub size_bytes: u64,
    /// Which nodes hold it.
    #[serde(default)]
    pub placement: Placement,
}

impl Image {
    /// Checks the name and the nodes named by the placement.
    pub fn validate(&self) -> Result<()> {
        check_name("image name", &self.name)?;
        if let Placement::Nodes { nodes } = &self.placement {
            for node in nodes {
                check_name("node name", node)?;
            }
        }
        Ok(())
    }
}

/// Where one node's copy of an image stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    /// Placed on the node, not copied yet.
    Pending,
    /// Chunks are moving.
    Replicating,
    /// The node holds the whole image.
    Complete,
    /// The last attempt failed (see `reason`).
    Failed,
    /// The node holds an older version: a newer one reached the master since.
    Stale,
}

impl CopyState {
    /// Wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            CopyState::Pending => "pending",
            CopyState::Replicating => "replicating",
            CopyState::Complete => "complete",
            CopyState::Failed => "failed",
            CopyState::Stale => "stale",
        }
    }

    /// Parses [`CopyState::as_str`].
    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "pending" => CopyState::Pending,
            "replicating" => CopyState::Replicating,
            "complete" => CopyState::Complete,
            "failed" => CopyState::Failed,
            "stale" => CopyState::Stale,
            _ => return Err(Error::invalid("copy state", text, "unknown")),
        })
    }
}

/// A node's report on its copy of an image (`PUT /images/{name}/copies/{node}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyReport {
    /// Where it stands.
    pub state: CopyState,
    /// Bytes copied so far.
    #[serde(default)]
    pub bytes: u64,
    /// Why it failed.
    #[serde(default)]
    pub reason: Option<String>,
}

/// One node's copy of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImageCopy {
    /// Image name.
    pub image: String,
    /// Node name.
    pub node: String,
    /// Where it stands.
    pub state: CopyState,
    /// Bytes copied so far.
    pub bytes: u64,
    /// Why the last attempt failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// Last change.
    pub updated_at: Millis,
}

/// An image's record with each node's copy of it: what `fog image ls --master` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImageStatus {
    /// The record (name, placement, ...), flattened.
    #[serde(flatten)]
    pub image: Image,
    /// Each placed node's copy.
    pub copies: Vec<ImageCopy>,
}

/// A site server: serves network boot to its subnets and images their hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique name.
    #[schemars(pattern(NAME_PATTERN))]
    pub name: String,
    /// Base URL the agents and the master reach it at (`http://10.99.0.1:8080`).
    #[schemars(pattern(URL_PATTERN))]
    pub url: String,
    /// The subnets it serves (`10.99.0.0/24`).
    #[serde(default)]
    pub subnets: Vec<Subnet>,
    /// How many hosts it images at once.
    #[serde(default = "default_max_clients")]
    #[schemars(range(min = 1))]
    pub max_clients: u32,
    /// A disabled node starts no new task.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Last heartbeat (set by the master; ignored on writes).
    #[serde(default)]
    pub last_seen: Option<Millis>,
}

fn default_max_clients() -> u32 {
    10
}

fn default_true() -> bool {
    true
}

impl Node {
    /// Checks the name, the URL and the slot limit.
    pub fn validate(&self) -> Result<()> {
        check_name("node name", &self.name)?;
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"))
            .ok_or_else(|| Error::invalid("node url", &self.url, "must start with http:// or https://"))?;
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid(
                "node url",
                &self.url,
                "needs a host, in printable ASCII",
            ));
        }
        // The document's pattern gives the shape; a URL of that shape that does not parse (a
        // bracket that opens no IPv6 address) is refused by this rule beyond it.
        let parsed = reqwest::Url::parse(&self.url)
            .map_err(|e| Error::unprocessable("node url", &self.url, format!("not a URL: {e}")))?;
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(Error::unprocessable("node url", &self.url, "names no host"));
        }
        if self.max_clients == 0 {
            return Err(Error::invalid("max clients", "0", "a node needs at least one slot"));
        }
        Ok(())
    }

    /// True when `address` is in one of its subnets; the prefix length of the best match.
    pub fn matches(&self, address: Ipv4Addr) -> Option<u8> {
        self.subnets
            .iter()
            .filter(|s| s.contains(address))
            .map(|s| s.prefix)
            .max()
    }
}

/// Parses a subnet written `10.99.0.0/24`, naming the input when it is wrong.
pub fn parse_subnet(text: &str) -> Result<Subnet> {
    text.parse::<Subnet>()
        .map_err(|e| Error::invalid("subnet", text, e.to_string()))
}

/// What a task does to its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Write an image to the host's disk.
    Deploy,
    /// Read the host's disk into an image.
    Capture,
    /// Report the hardware.
    Inventory,
    /// Erase partition tables and filesystem signatures.
    WipeFast,
    /// Overwrite the whole disk.
    WipeFull,
    /// Boot the agent's environment to a shell.
    Debug,
    /// Deploy in a multicast session of the host's node: one stream for every host deploying
    /// the same image there (see [`crate::net::multicast`]).
    Multicast,
}

impl TaskKind {
    /// Wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Deploy => "deploy",
            TaskKind::Capture => "capture",
            TaskKind::Inventory => "inventory",
            TaskKind::WipeFast => "wipe_fast",
            TaskKind::WipeFull => "wipe_full",
            TaskKind::Debug => "debug",
            TaskKind::Multicast => "multicast",
        }
    }

    /// Parses [`TaskKind::as_str`].
    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "deploy" => TaskKind::Deploy,
            "capture" => TaskKind::Capture,
            "inventory" => TaskKind::Inventory,
            "wipe_fast" => TaskKind::WipeFast,
            "wipe_full" => TaskKind::WipeFull,
            "debug" => TaskKind::Debug,
            "multicast" => TaskKind::Multicast,
            _ => return Err(Error::invalid("task kind", text, "unknown")),
        })
    }

    /// Deploy and capture need an image.
    pub fn needs_image(self) -> bool {
        matches!(self, TaskKind::Deploy | TaskKind::Capture | TaskKind::Multicast)
    }

    /// Writes an image to the host's disk, so lays its partitions out (see [`LayoutMode`]).
    pub fn deploys(self) -> bool {
        matches!(self, TaskKind::Deploy | TaskKind::Multicast)
    }
}

/// What the agent does when the task is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum After {
    /// Reboot (the default).
    #[default]
    Reboot,
    /// Power off.
    Poweroff,
    /// Stay up (debug).
    Stay,
}

impl After {
    /// Wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            After::Reboot => "reboot",
            After::Poweroff => "poweroff",
            After::Stay => "stay",
        }
    }

    /// Parses [`After::as_str`].
    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "reboot" => After::Reboot,
            "poweroff" => After::Poweroff,
            "stay" => After::Stay,
            _ => return Err(Error::invalid("after", text, "use reboot, poweroff or stay")),
        })
    }
}

/// Where a task stands. Serialized flat into the task: `"state": "in_progress", "percent": ...`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    /// Created; its host has not asked yet.
    Queued,
    /// The host's agent asked for it.
    CheckedIn,
    /// The agent waits for a free slot on its node.
    WaitingForSlot,
    /// Running, holding one of its node's slots.
    InProgress {
        /// 0 to 100.
        percent: f64,
        /// Bytes moved.
        bytes: u64,
        /// Bytes per second, as the agent measured.
        rate: u64,
    },
    /// Done.
    Complete,
    /// Given up.
    Failed {
        /// Why.
        reason: String,
    },
    /// Stopped by an operator.
    Cancelled,
}

impl TaskState {
    /// Wire and database name.
    pub fn name(&self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::CheckedIn => "checked_in",
            TaskState::WaitingForSlot => "waiting_for_slot",
            TaskState::InProgress { .. } => "in_progress",
            TaskState::Complete => "complete",
            TaskState::Failed { .. } => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Complete, failed or cancelled: nothing more happens to the task.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            TaskState::Complete | TaskState::Failed { .. } | TaskState::Cancelled
        )
    }
}

/// The names of the states, for filters and checks.
pub const STATE_NAMES: [&str; 7] = [
    "queued",
    "checked_in",
    "waiting_for_slot",
    "in_progress",
    "complete",
    "failed",
    "cancelled",
];

/// A task: one job for one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    /// Id.
    pub id: TaskId,
    /// What it does.
    pub kind: TaskKind,
    /// The host it runs on.
    pub host: String,
    /// The image deployed or captured.
    pub image: Option<String>,
    /// The node imaging the host (chosen at creation when known, else at check-in).
    pub node: Option<String>,
    /// The group task that created it.
    pub group: Option<String>,
    /// The schedule that created it.
    pub schedule: Option<i64>,
    /// What the agent does afterwards.
    pub after: After,
    /// Wake the host with a magic packet from its node.
    pub wake: bool,
    /// A deploy's partition layout, settled when the task was created (the one asked for, else
    /// the host's); none for the other kinds.
    #[serde(default)]
    #[schemars(with = "Option<LayoutModeSchema>")]
    pub layout: Option<LayoutMode>,
    /// Where it stands.
    #[serde(flatten)]
    pub state: TaskState,
    /// Place in its node's line (set at check-in; lower goes first).
    pub ticket: Option<i64>,
    /// Created.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
}

/// A request for a task (for one host, or for each host of a group).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// What it does.
    pub kind: TaskKind,
    /// The host (unless created for a group).
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub host: Option<String>,
    /// The image; for a deploy, defaults to the host's image.
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub image: Option<String>,
    /// After the task.
    #[serde(default)]
    pub after: After,
    /// Wake the host first.
    #[serde(default)]
    pub wake: bool,
    /// A deploy's partition layout; default: the host's layout. Other kinds take none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<LayoutModeSchema>")]
    pub layout: Option<LayoutMode>,
}

impl NewTask {
    /// The layout a task of this request for `host` carries: for a deploy, the one asked for,
    /// else the host's; none for the other kinds.
    pub fn layout_for(&self, host: &Host) -> Option<LayoutMode> {
        self.kind.deploys().then(|| self.layout.unwrap_or(host.layout))
    }

    /// Refuses a layout asked for a task that deploys nothing.
    pub fn check_layout(&self) -> Result<()> {
        match self.layout {
            Some(layout) if !self.kind.deploys() => Err(Error::unprocessable(
                "layout",
                layout.as_str(),
                format!("a {} task takes no layout", self.kind.as_str()),
            )),
            _ => Ok(()),
        }
    }
}

impl Task {
    /// The layout the agent deploys with: the task's, else (a task stored before tasks carried
    /// one) the default, fit.
    pub fn deploy_layout(&self) -> LayoutMode {
        self.layout.unwrap_or_default()
    }
}

/// One state change of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskEvent {
    /// The event's id (the history's cursor).
    #[serde(default)]
    pub id: i64,
    /// Task id.
    pub task: TaskId,
    /// When.
    pub at: Millis,
    /// From this state (none at creation).
    pub from: Option<String>,
    /// To this state.
    pub to: String,
    /// Detail (a failure's reason, who cancelled).
    pub detail: Option<String>,
}

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum When {
    /// Once, at this time (milliseconds since the epoch).
    At(Millis),
    /// Each time the cron line matches (five fields, UTC).
    Cron(#[schemars(pattern(CRON_PATTERN))] String),
}

/// A task created later, once or repeatedly, for a host or a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Id (set by the master).
    #[serde(default)]
    pub id: i64,
    /// When.
    pub when: When,
    /// The task; `group` below instead of `task.host` for one task per member.
    pub task: NewTask,
    /// A group: one task per host in it when it fires.
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub group: Option<String>,
    /// Next time it fires (set by the master; none once a one-off has fired).
    #[serde(default)]
    pub next_run: Option<Millis>,
}

/// A machine registering itself from the boot menu (`POST /api/v1/register`): the master creates
/// its host, or updates the inventory of the host that has one of these MACs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Its network cards (at least one; a MAC listed twice counts once: VLANs share one).
    #[schemars(length(min = 1), inner(pattern(MAC_PATTERN)))]
    pub macs: Vec<String>,
    /// Its SMBIOS UUID, when it can read it (else taken from the inventory's DMI).
    #[serde(default)]
    #[schemars(pattern(UUID_PATTERN))]
    pub uuid: Option<String>,
    /// The name wanted; default: from the DMI serial, else `host-<mac>`.
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub name: Option<String>,
    /// What the agent found (`fogcore::agent::inventory::Inventory` as JSON).
    #[serde(default)]
    pub inventory: serde_json::Value,
}

/// An approval of a host that registered itself from the boot menu
/// (`POST /registrations/{name}/approve`): the image and group it gets, when given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The image it gets.
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub image: Option<String>,
    /// The group it joins.
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub group: Option<String>,
}

/// The master's answer to a [`Registration`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Registered {
    /// The host as stored now.
    pub host: Host,
    /// True when this registration created it, false when it was known.
    pub created: bool,
}

/// What an agent sends when it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    /// The MAC it booted from.
    #[schemars(pattern(MAC_PATTERN))]
    pub mac: String,
    /// Its SMBIOS UUID, when it can read it.
    #[serde(default)]
    #[schemars(pattern(UUID_PATTERN))]
    pub uuid: Option<String>,
    /// Its IPv4 address (picks the node when the host has none set).
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
}

/// Whether the agent may start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "slot", rename_all = "snake_case")]
pub enum SlotState {
    /// Go: the task holds one of the node's slots.
    Granted,
    /// Ask again later; `place` 1 is next in line.
    Waiting {
        /// Place in line.
        place: u32,
        /// Hosts of the node being imaged now.
        active: u32,
        /// The node's slot limit.
        max: u32,
    },
}

/// The master's answer to a check-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckInReply {
    /// The task.
    pub task: Task,
    /// Whether to start.
    #[serde(flatten)]
    pub slot: SlotState,
}

/// An agent's progress report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressReport {
    /// 0 to 100.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: f64,
    /// Bytes moved.
    #[serde(default)]
    pub bytes: u64,
    /// Bytes per second.
    #[serde(default)]
    pub rate: u64,
}

/// An agent's last word on a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckOut {
    /// True when the task did what it should.
    pub ok: bool,
    /// Why not.
    #[serde(default)]
    pub reason: Option<String>,
    /// Hardware inventory found (stored on the host).
    #[serde(default)]
    pub inventory: Option<serde_json::Value>,
    /// Set by a node that ran the task while the master was unreachable: the outcome stands
    /// whatever state the master last knew the task in.
    #[serde(default)]
    pub offline: bool,
}

/// A node's periodic report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Free bytes in its store.
    #[serde(default)]
    pub free_bytes: Option<u64>,
    /// Images it holds completely.
    #[serde(default)]
    #[schemars(inner(pattern(NAME_PATTERN)))]
    pub images: Vec<String>,
    /// Agents imaging through it now (as the node counts them).
    #[serde(default)]
    pub active: Option<u32>,
    /// Slots it has free (its limit less `active`).
    #[serde(default)]
    pub free_slots: Option<u32>,
}

/// An open task of a node's host with what the node's boot script needs: the host's MACs
/// (the script is asked for by MAC) and its extra kernel arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BootTask {
    /// The task.
    pub task: Task,
    /// The host's MACs, `52:54:00:12:34:56`.
    pub macs: Vec<String>,
    /// The host's extra kernel arguments.
    #[serde(default)]
    pub kernel_args: String,
}

/// A request to wake a host with a Wake-on-LAN magic packet, sent by the host's node (which
/// claims it with `POST /nodes/{name}/wakes`, each once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Wake {
    /// Id.
    pub id: i64,
    /// The host to wake.
    pub host: String,
    /// Its MACs, `52:54:00:12:34:56` (a packet for each).
    pub macs: Vec<String>,
    /// The node that sends the packet.
    pub node: String,
    /// The task that asked for it (none: `POST /hosts/{name}/wake`).
    #[serde(default)]
    pub task: Option<TaskId>,
    /// When it was asked for.
    pub requested_at: Millis,
}

/// A new node and its token (shown once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeToken {
    /// The node.
    pub node: Node,
    /// Its bearer token; the master keeps only its hash.
    pub token: String,
}

/// A MAC in canonical form (`52:54:00:12:34:56`), or an error naming it.
pub fn canonical_mac(text: &str) -> Result<String> {
    Mac::of_card(text).map(|mac| mac.to_string())
}

/// A UUID in canonical form (lower case, 8-4-4-4-12), or an error naming it.
pub fn canonical_uuid(text: &str) -> Result<String> {
    let lower = text.to_ascii_lowercase();
    let groups: Vec<&str> = lower.split('-').collect();
    let ok = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && lower.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit());
    if ok {
        Ok(lower)
    } else {
        Err(Error::invalid("uuid", text, "write 8-4-4-4-12 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            uuid: Some("4C4C4544-0042-3510-8051-B7C04F563232".into()),
            ..Host::new("lab-01", vec!["52-54-00-AB-CD-EF".into()])
        }
    }

    #[test]
    fn canonicalizes_macs_and_uuids() -> Result<()> {
        let mut h = host();
        h.validate()?;
        assert_eq!(h.macs, ["52:54:00:ab:cd:ef"]);
        assert_eq!(h.uuid.as_deref(), Some("4c4c4544-0042-3510-8051-b7c04f563232"));
        Ok(())
    }

    #[test]
    fn rejects_bad_macs_naming_them() {
        for bad in [
            "52:54:00:ab:cd",
            "zz:54:00:ab:cd:ef",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
        ] {
            let mut h = host();
            h.macs = vec![bad.into()];
            let e = h.validate().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        let mut h = host();
        h.macs.push("52:54:00:ab:cd:ef".into());
        assert!(h.validate().is_err());
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", ".hidden", "a/b", "has space", &"x".repeat(65)] {
            assert!(check_name("host name", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("host name", "PC-12_b.lab").is_ok());
    }

    #[test]
    fn the_documented_layouts_are_the_ones_serde_reads() -> Result<()> {
        let schema = schemars::schema_for!(LayoutModeSchema);
        let documented: Vec<serde_json::Value> = schema
            .get("oneOf")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .map(|variant| variant["const"].clone())
            .collect();
        let all = [LayoutMode::Fit, LayoutMode::Exact];
        let read = serde_json::to_value(all).map_err(|e| Error::Internal(e.to_string()))?;
        assert_eq!(serde_json::Value::Array(documented), read, "{schema:?}");
        for layout in all {
            assert_eq!(layout.as_str().parse::<LayoutMode>()?, layout);
        }
        Ok(())
    }

    #[test]
    fn a_deploy_takes_the_layout_asked_for_else_the_hosts() -> Result<()> {
        let mut h = host();
        let mut new = NewTask {
            kind: TaskKind::Deploy,
            host: None,
            image: None,
            after: After::Reboot,
            wake: false,
            layout: None,
        };
        assert_eq!(new.layout_for(&h), Some(LayoutMode::Fit), "a host's default is fit");
        h.layout = LayoutMode::Exact;
        assert_eq!(new.layout_for(&h), Some(LayoutMode::Exact), "the host's");
        new.layout = Some(LayoutMode::Fit);
        assert_eq!(new.layout_for(&h), Some(LayoutMode::Fit), "the task's over the host's");
        new.check_layout()?;
        new.kind = TaskKind::Capture;
        assert!(new.check_layout().is_err(), "a capture takes no layout");
        new.layout = None;
        assert_eq!(new.layout_for(&h), None);
        Ok(())
    }

    #[test]
    fn task_state_serializes_flat() -> Result<()> {
        let s = TaskState::InProgress {
            percent: 12.5,
            bytes: 10,
            rate: 3,
        };
        let j = serde_json::to_value(&s).map_err(|e| Error::Internal(e.to_string()))?;
        assert_eq!(j["state"], "in_progress");
        assert_eq!(j["percent"], 12.5);
        Ok(())
    }
}

/// The result of a task request for a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupTasks {
    /// One task per host that could take one.
    pub created: Vec<Task>,
    /// Hosts left out, with why.
    pub skipped: Vec<Skipped>,
}

/// A host a group task left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Skipped {
    /// Host name.
    pub host: String,
    /// Why.
    pub reason: String,
}

/// One page of a list: its items, and the cursor that asks for the next page (`after`), none
/// on the last page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "{T}Page")]
pub struct Page<T> {
    /// The items, in the list's order.
    pub items: Vec<T>,
    /// Give this as `after` for the next page; none when this page is the last.
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// A page of `limit` items out of `items` fetched with one more than `limit` when there are
    /// more: that one is dropped and the last kept one's `cursor` becomes `next`.
    pub fn of(mut items: Vec<T>, limit: u32, cursor: impl Fn(&T) -> String) -> Page<T> {
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next = if more { items.last().map(cursor) } else { None };
        Page { items, next }
    }
}

/// Items a page holds unless asked (`limit`).
pub const PAGE_DEFAULT: u32 = 100;
/// Most items a page holds.
pub const PAGE_MAX: u32 = 1000;

/// The page size a listing asked for: [`PAGE_DEFAULT`] unless given, at most [`PAGE_MAX`].
pub fn page_limit(limit: Option<u32>) -> Result<u32> {
    match limit {
        None => Ok(PAGE_DEFAULT),
        Some(n @ 1..=PAGE_MAX) => Ok(n),
        Some(n) => Err(Error::invalid(
            "limit",
            n.to_string(),
            format!("a page holds 1 to {PAGE_MAX} items"),
        )),
    }
}

/// Which hosts a host listing returns, a page at a time, by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostQuery {
    /// At most this many (default 100).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
    /// The `next` of the page before.
    #[serde(default)]
    pub after: Option<String>,
    /// Hosts whose name, a MAC, address or inventory (serial, model) contains this, any case.
    #[serde(default)]
    pub q: Option<String>,
    /// Only of this group.
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub group: Option<String>,
    /// Only of this node (as set on the host).
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub node: Option<String>,
    /// Only with this image.
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub image: Option<String>,
    /// Only hosts that registered themselves from the boot menu and wait for approval.
    #[serde(default)]
    pub pending: bool,
}

impl HostQuery {
    /// Checks the names it filters by.
    pub fn validate(&self) -> Result<()> {
        check_names([
            ("group name", &self.group),
            ("node name", &self.node),
            ("image name", &self.image),
        ])
    }
}

/// Refuses a negative time or id.
pub fn check_not_negative(field: &'static str, value: Option<i64>) -> Result<()> {
    match value {
        Some(v) if v < 0 => Err(Error::invalid(field, v.to_string(), "must not be negative")),
        _ => Ok(()),
    }
}

/// Checks each name given.
fn check_names<'a>(names: impl IntoIterator<Item = (&'static str, &'a Option<String>)>) -> Result<()> {
    names
        .into_iter()
        .filter_map(|(field, name)| name.as_deref().map(|n| (field, n)))
        .try_for_each(|(field, name)| check_name(field, name))
}

/// Which images an image listing returns, a page at a time, by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageQuery {
    /// At most this many (default 100).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
    /// The `next` of the page before.
    #[serde(default)]
    pub after: Option<String>,
    /// Images whose name, OS or description contains this, any case.
    #[serde(default)]
    pub q: Option<String>,
}

/// A page of a task's history, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// At most this many (default 100).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
    /// The `next` of the page before.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub after: Option<i64>,
}

/// Which tasks a task listing returns, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskFilter {
    /// Only in this state.
    #[serde(default)]
    #[schemars(extend("enum" = STATE_NAMES))]
    pub state: Option<String>,
    /// Only of this host.
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub host: Option<String>,
    /// Only on this node.
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub node: Option<String>,
    /// Only tasks not over.
    #[serde(default)]
    pub open_only: bool,
    /// Only of this kind.
    #[serde(default)]
    pub kind: Option<TaskKind>,
    /// Only deploying or capturing this image.
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub image: Option<String>,
    /// Only created by a task for this group.
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub group: Option<String>,
    /// Only changed at or after this time (ms since the epoch).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub since: Option<Millis>,
    /// Through the API: at most this many (default 100, at most 1000). Inside the master: all
    /// when none.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
    /// The `next` of the page before: tasks older than this id.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub after: Option<TaskId>,
}

impl TaskFilter {
    /// Checks the state and the names it filters by.
    pub fn validate(&self) -> Result<()> {
        if let Some(state) = &self.state
            && !STATE_NAMES.contains(&state.as_str())
        {
            return Err(Error::invalid(
                "state",
                state,
                format!("use one of {}", STATE_NAMES.join(", ")),
            ));
        }
        for (field, value) in [("since", self.since), ("after", self.after)] {
            check_not_negative(field, value)?;
        }
        check_names([
            ("host name", &self.host),
            ("node name", &self.node),
            ("image name", &self.image),
            ("group name", &self.group),
        ])
    }
}

// ---- tokens and audit

/// A person's token's record: the secret itself is shown once, when issued, and never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenInfo {
    /// Its name, unique: what the audit log names and `DELETE /tokens/{name}` revokes.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The user who made it (none: an admin token made by the CLI, the API or the first start).
    #[serde(default)]
    pub owner: Option<String>,
    /// When it was issued (ms since the epoch).
    pub created_at: Millis,
    /// When it stops working (ms since the epoch); none: never.
    pub expires_at: Option<Millis>,
}

/// A request for a new token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Its name, unique among tokens.
    #[schemars(pattern(NAME_PATTERN))]
    pub name: String,
    /// What it may do (default: admin; a user's token gets at most the user's role).
    #[serde(default)]
    pub role: Option<Role>,
    /// When it stops working (ms since the epoch); none: never.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub expires_at: Option<Millis>,
}

/// A token just issued: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IssuedToken {
    /// Its record.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The bearer token (`fog_...`): keep it, it is not shown again.
    pub token: String,
}

/// One call recorded in the audit log: every mutating call, and every refused one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditEntry {
    /// Id, increasing.
    pub id: i64,
    /// When (ms since the epoch).
    pub at: Millis,
    /// Who: `token:NAME`, `node:NAME`, `task:ID@NODE`, or `anonymous` (no or an unknown token).
    pub actor: String,
    /// What: the method and route (`DELETE /api/v1/hosts/{name}`).
    pub action: String,
    /// On what: the path's names and ids, or the name the body gives.
    pub target: String,
    /// The caller's address, when known.
    pub address: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// `ok`, or the error's message.
    pub result: String,
}

/// Which audit entries a listing returns, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// At most this many (default 100).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
    /// The `next` of the page before: entries older than this id.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub after: Option<i64>,
    /// Only by this actor (`token:NAME`, `node:NAME`, ...).
    #[serde(default)]
    pub actor: Option<String>,
    /// Entries whose action or target contains this, any case.
    #[serde(default)]
    pub q: Option<String>,
    /// Only refused or failed calls (status 400 and above).
    #[serde(default)]
    pub failed: bool,
    /// Only at or after this time (ms since the epoch).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub since: Option<Millis>,
}

impl AuditQuery {
    /// Checks the cursor and the time.
    pub fn validate(&self) -> Result<()> {
        check_not_negative("after", self.after)?;
        check_not_negative("since", self.since)
    }
}

/// What a person (a user, or an API token they made) may do. Ordered: each role can do what the
/// ones before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything but the audit log, the tokens and the users; changes nothing.
    Viewer,
    /// Also changes hosts, groups, images, tasks and schedules.
    Operator,
    /// Everything: nodes, users, tokens, the audit log too.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// Its name: `viewer`, `operator`, `admin`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = Error;

    fn from_str(text: &str) -> Result<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == text)
            .ok_or_else(|| Error::invalid("role", text, "one of admin, operator, viewer"))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A person who signs in to the web pages (the password itself is never shown or returned).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct User {
    /// Unique name.
    #[schemars(pattern(NAME_PATTERN))]
    pub name: String,
    /// What they may do.
    pub role: Role,
    /// When they were added (ms since the epoch).
    pub created_at: Millis,
    /// Their last sign-in (ms since the epoch).
    #[serde(default)]
    pub last_login: Option<Millis>,
}

/// A request for a new user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Unique name.
    #[schemars(pattern(NAME_PATTERN))]
    pub name: String,
    /// What they may do.
    pub role: Role,
    /// Their password ([`MIN_PASSWORD`] to [`MAX_PASSWORD`] characters).
    #[schemars(length(min = 8, max = 1024))]
    pub password: String,
}

/// A change to a user (`PUT /users/{name}`): a new role, a new password (which ends their
/// sessions), or both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    /// The new role.
    #[serde(default)]
    pub role: Option<Role>,
    /// The new password.
    #[serde(default)]
    #[schemars(length(min = 8, max = 1024))]
    pub password: Option<String>,
}

/// The shortest password a user may have.
pub const MIN_PASSWORD: usize = 8;

/// The longest password a user may have.
pub const MAX_PASSWORD: usize = 1024;

/// Refused unless `password` is one a user may have.
pub fn check_password(password: &str) -> Result<()> {
    // Counted in characters, as the document's length bounds are.
    let length = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&length) {
        return Err(Error::invalid(
            "password",
            "(hidden)",
            format!("{MIN_PASSWORD} to {MAX_PASSWORD} characters"),
        ));
    }
    Ok(())
}
