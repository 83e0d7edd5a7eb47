//! The HTTP boot service on loopback, driven by reqwest and by a raw TCP client (for the
//! traversal paths that a URL library would normalise away before sending).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fogcore::net::http::{DefaultMenu, HttpService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Running {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<fogcore::Result<()>>,
}

impl Running {
    async fn stop(self) -> TestResult {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await???;
        Ok(())
    }
}

async fn start(boot_dir: &Path) -> Result<Running, Box<dyn std::error::Error>> {
    let service = HttpService {
        boot_dir: boot_dir.to_path_buf(),
        scripts: Arc::new(DefaultMenu::default()),
        fallback_base: "http://10.99.0.1:8080".into(),
        extra_routes: None,
    };
    let server = service.bind("127.0.0.1:0".parse()?).await?;
    let addr = server.local_addr();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(server.run(cancel.clone(), Duration::from_secs(2)));
    Ok(Running { addr, cancel, task })
}

/// Deterministic pseudo-random bytes (xorshift), so a wrong offset cannot match by chance.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sends `target` verbatim and returns the status code and the body.
async fn raw_get(addr: SocketAddr, target: &str) -> Result<(u16, Vec<u8>), Box<dyn std::error::Error>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let body = match response.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => response.split_off(at + 4),
        None => Vec::new(),
    };
    Ok((status, body))
}

#[tokio::test]
async fn serves_scripts_and_menu() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path()).await?;
    let base = format!("http://{}", server.addr);
    let client = crate::http_client();

    let chain = client.get(format!("{base}/boot.ipxe")).send().await?;
    assert_eq!(chain.status(), 200);
    let chain = chain.text().await?;
    assert!(chain.starts_with("#!ipxe\n"), "{chain}");
    assert!(
        chain.contains(&format!("chain --autofree {base}/boot/${{netX/mac}}")),
        "{chain}"
    );

    for spelling in ["52:54:00:12:34:56", "52-54-00-12-34-56", "525400123456"] {
        let menu = client.get(format!("{base}/boot/{spelling}")).send().await?;
        assert_eq!(menu.status(), 200, "{spelling}");
        let menu = menu.text().await?;
        assert!(menu.contains("menu fog: 52:54:00:12:34:56"), "{menu}");
        assert!(menu.contains("choose --timeout 5000 --default local"), "{menu}");
        assert!(menu.contains("sanboot --no-describe --drive 0x80"), "{menu}");
        assert!(menu.contains("iseq ${platform} efi"), "{menu}");
    }

    for bad in ["52:54:00:12:34", "zz:54:00:12:34:56", "52:54:00:12:34:56:78", "hello"] {
        let response = client.get(format!("{base}/boot/{bad}")).send().await?;
        assert_eq!(response.status(), 400, "{bad}");
        assert!(response.text().await?.contains("malformed MAC"));
    }
    server.stop().await
}

#[tokio::test]
async fn a_host_header_that_is_not_a_plain_host_falls_back_to_the_node_address() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path()).await?;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await?;
    stream
        .write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: evil/x?y\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    assert!(
        response.contains("chain --autofree http://10.99.0.1:8080/boot/"),
        "{response}"
    );
    server.stop().await
}

#[tokio::test]
async fn serves_a_large_file_with_length_and_ranges() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = pattern(40 << 20);
    std::fs::create_dir(dir.path().join("debian"))?;
    std::fs::write(dir.path().join("debian/initrd.img"), &data)?;
    let server = start(dir.path()).await?;
    let url = format!("http://{}/debian/initrd.img", server.addr);
    let client = crate::http_client();

    let whole = client.get(&url).send().await?;
    assert_eq!(whole.status(), 200);
    assert_eq!(
        whole.headers().get("content-length").and_then(|v| v.to_str().ok()),
        Some("41943040")
    );
    assert!(whole.bytes().await? == data, "whole file differs");

    let head = client.head(&url).send().await?;
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers().get("content-length").and_then(|v| v.to_str().ok()),
        Some("41943040")
    );

    let (start, end) = (12_345_678usize, 23_456_789usize);
    let part = client
        .get(&url)
        .header("range", format!("bytes={start}-{end}"))
        .send()
        .await?;
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers().get("content-range").and_then(|v| v.to_str().ok()),
        Some(format!("bytes {start}-{end}/41943040").as_str())
    );
    let body = part.bytes().await?;
    assert!(Some(&body[..]) == data.get(start..=end), "range bytes differ");

    let tail = client.get(&url).header("range", "bytes=-100").send().await?;
    assert_eq!(tail.status(), 206);
    assert!(Some(&tail.bytes().await?[..]) == data.get(data.len() - 100..));

    let beyond = client.get(&url).header("range", "bytes=99999999-").send().await?;
    assert_eq!(beyond.status(), 416);

    let missing = client.get(format!("http://{}/nope.efi", server.addr)).send().await?;
    assert_eq!(missing.status(), 404);
    server.stop().await
}

#[tokio::test]
async fn refuses_paths_out_of_the_boot_directory() -> TestResult {
    let top = tempfile::tempdir()?;
    let root = top.path().join("boot");
    let outside = top.path().join("outside");
    std::fs::create_dir_all(root.join("sub"))?;
    std::fs::create_dir_all(&outside)?;
    std::fs::write(outside.join("secret"), b"secret bytes")?;
    std::fs::write(root.join("sub/ipxe.efi"), b"ipxe inside")?;
    std::os::unix::fs::symlink(outside.join("secret"), root.join("escape"))?;
    std::os::unix::fs::symlink(&outside, root.join("outdir"))?;
    std::os::unix::fs::symlink("../outside/secret", root.join("sub/relative"))?;
    std::os::unix::fs::symlink("sub/ipxe.efi", root.join("alias.efi"))?;
    let server = start(&root).await?;

    let (status, body) = raw_get(server.addr, "/sub/ipxe.efi").await?;
    assert_eq!((status, body.as_slice()), (200, &b"ipxe inside"[..]));
    let (status, body) = raw_get(server.addr, "/alias.efi").await?;
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"ipxe inside"[..]),
        "a symlink inside the root is served"
    );

    for target in [
        "/../outside/secret",
        "/sub/../../outside/secret",
        "/%2e%2e/outside/secret",
        "/%2E%2E%2Foutside%2Fsecret",
        "/sub/%2e%2e/%2e%2e/outside/secret",
        "/..%2foutside%2fsecret",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/escape",
        "/outdir/secret",
        "/sub/relative",
        "/sub/..%5c..%5coutside%5csecret",
        "/%00",
    ] {
        let (status, body) = raw_get(server.addr, target).await?;
        assert!(
            status == 404 || status == 400,
            "{target} gave {status}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(!body.windows(6).any(|w| w == b"secret"), "{target} leaked the file");
        assert!(!body.windows(5).any(|w| w == b"root:"), "{target} leaked /etc/passwd");
    }
    server.stop().await
}
