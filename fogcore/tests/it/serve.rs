//! `Server::start` from a config: everything bound before anything serves, one error naming
//! what failed, a bounded stop.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use fogcore::net::config::ServeConfig;
use fogcore::net::server::Server;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn config(boot_dir: &std::path::Path, http: &str) -> fogcore::Result<ServeConfig> {
    let text = format!(
        "[node]\naddress = \"127.0.0.1\"\nboot_dir = {boot:?}\ndata_dir = {boot:?}\n[http]\nlisten = \"{http}\"\n",
        boot = boot_dir.display().to_string()
    );
    ServeConfig::parse(&text, "test.toml")
}

#[test]
fn a_taken_port_is_one_error_naming_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let error = match Server::start(config(dir.path(), &format!("127.0.0.1:{port}"))?) {
        Ok(_) => return Err("started on a taken port".into()),
        Err(e) => e,
    };
    let text = error.to_string();
    assert!(text.contains(&format!("port {port}")), "{text}");
    assert!(text.contains("http"), "{text}");
    assert!(text.contains("already in use"), "{text}");
    assert!(error.is_bad_input());
    Ok(())
}

#[test]
fn a_missing_boot_dir_is_refused_before_serving() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("nope");
    let error = match Server::start(config(&missing, "127.0.0.1:0")?) {
        Ok(_) => return Err("started without a boot dir".into()),
        Err(e) => e,
    };
    assert!(error.to_string().contains("nope"), "{error}");
    Ok(())
}

#[test]
fn serves_then_stops_within_seconds() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("hello.txt"), b"hello")?;
    let server = Server::start(config(dir.path(), "127.0.0.1:0")?)?;
    let addr = server.addrs().http.ok_or("no http address")?;
    let mut stream = std::net::TcpStream::connect(addr)?;
    // Keep a connection open: stop must not wait for it past the grace period.
    use std::io::{Read, Write};
    stream.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !seen.ends_with(b"hello") {
        let n = stream.read(&mut buf)?;
        assert!(n > 0, "connection closed after {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let started = Instant::now();
    server.stop()?;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        started.elapsed()
    );
    // Nothing may serve our file there any more. (The port itself may already be another
    // parallel test's: bind(0) can hand a freed port straight to the next listener.)
    if let Ok(mut again) = std::net::TcpStream::connect(addr) {
        again.set_read_timeout(Some(Duration::from_secs(5)))?;
        let asked = again.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut reply = Vec::new();
        let _ = asked.and_then(|()| again.read_to_end(&mut reply));
        let reply = String::from_utf8_lossy(&reply);
        assert!(!reply.starts_with("HTTP/1.1 200"), "still serving after stop: {reply}");
    }
    Ok(())
}

fn sample_configs() -> Result<Vec<(std::path::PathBuf, String)>, Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path)?;
            out.push((path, text));
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn every_sample_config_parses() -> TestResult {
    let samples = sample_configs()?;
    assert!(samples.len() >= 2, "configs/ has {} samples", samples.len());
    for (path, _) in &samples {
        let config = ServeConfig::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let described = config.describe();
        assert!(described.contains("http"), "{described}");
    }
    let full = ServeConfig::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/node-full.toml"))?;
    let dhcp = full.dhcp.as_ref().ok_or("node-full has no dhcp")?;
    assert_eq!(dhcp.pools.len(), 1);
    assert!(full.describe().contains("pool 10.99.0.0/24: 10.99.0.100-10.99.0.200"));
    Ok(())
}

#[test]
fn sample_configs_with_an_unknown_key_or_a_bad_value_name_it() -> TestResult {
    for (path, text) in sample_configs()? {
        // An unknown key in every section the sample has.
        for section in ["[node]", "[http]", "[tftp]", "[dhcp]", "[boot]"] {
            if !text.contains(&format!("\n{section}\n")) {
                continue;
            }
            let broken = text.replacen(&format!("\n{section}\n"), &format!("\n{section}\nbogus_key = 1\n"), 1);
            let error = ServeConfig::parse(&broken, "fog.toml")
                .err()
                .ok_or_else(|| format!("{}: {section} bogus_key accepted", path.display()))?;
            let text = error.to_string();
            assert!(text.contains("bogus_key"), "{}: {text}", path.display());
            assert!(error.is_bad_input());
        }
        // A bad value, named by its key.
        for (good, bad, key) in [
            ("address = \"10.99.0.1\"", "address = \"10.99.0.256\"", "[node] address"),
            (
                "listen = \"0.0.0.0:8080\"",
                "listen = \"0.0.0.0:80800\"",
                "[http] listen",
            ),
            ("mode = \"full\"", "mode = \"fulll\"", "[dhcp] mode"),
            ("mode = \"proxy\"", "mode = \"proxi\"", "[dhcp] mode"),
        ] {
            if !text.contains(good) {
                continue;
            }
            let broken = text.replacen(good, bad, 1);
            let error = ServeConfig::parse(&broken, "fog.toml")
                .err()
                .ok_or_else(|| format!("{}: {bad} accepted", path.display()))?;
            assert!(error.to_string().contains(key), "{}: {error}", path.display());
        }
    }
    Ok(())
}
