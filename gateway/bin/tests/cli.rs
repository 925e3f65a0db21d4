//! The command line: configuration errors exit 64 naming the key, before
//! anything listens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn switchboard() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let p = dir.path().join("switchboard.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_config_accepts_the_documented_example() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../config/examples/switchboard.toml");
    let out = switchboard()
        .arg("check-config")
        .arg(&example)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_the_key_the_value_and_what_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    for (text, must_contain) in [
        (
            "[feed]\nbackend = \"kafak\"\n",
            ["feed.backend", "kafak", "sqlite"],
        ),
        (
            "[gateway]\nhttp_lisen = \"127.0.0.1:1\"\n",
            ["gateway.http_lisen", "unknown field", "http_listen"],
        ),
        (
            "[gateway]\nmax_body_bytes = 1\n",
            ["gateway.max_body_bytes", "1", "between 1024"],
        ),
        ("[feed\n", ["not valid TOML", "switchboard.toml", "line"]),
    ] {
        let file = write(&dir, text);
        let out = switchboard()
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{text}: {stderr}");
        for needle in must_contain {
            assert!(
                stderr.contains(needle),
                "{text}: {needle:?} missing from: {stderr}"
            );
        }
    }
}

#[test]
fn a_bad_environment_override_stops_start_up_with_64() {
    let dir = tempfile::tempdir().unwrap();
    let out = switchboard()
        .env("SWITCHBOARD_NODE__DATA_DIR", dir.path())
        .env("SWITCHBOARD_CRM__HTTP_LISTEN", "everywhere")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("crm.http_listen") && stderr.contains("SWITCHBOARD_CRM__HTTP_LISTEN"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("feed.sqlite").exists(),
        "it started before validating"
    );
}

#[test]
fn a_bad_librdkafka_property_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "[feed]\nbackend = \"kafka\"\n[feed.kafka.properties]\n\"no.such.property\" = \"1\"\n",
    );
    let out = switchboard()
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("feed.kafka.properties") && stderr.contains("no.such.property"),
        "{stderr}"
    );
}

#[test]
fn a_taken_port_is_reported_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = switchboard()
        .env("SWITCHBOARD_NODE__DATA_DIR", dir.path())
        .env("SWITCHBOARD_GATEWAY__HTTP_LISTEN", "127.0.0.1:0")
        .env(
            "SWITCHBOARD_CRM__HTTP_LISTEN",
            taken.local_addr().unwrap().to_string(),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("crm.http_listen"), "{stderr}");
}
