//! The operator's surface under attack: browser origins, the data directory's permissions, the
//! admin token (length, generated file, online guessing) (an attack from the adversarial review, issue 8, through the public interfaces: a real
//! server on 127.0.0.1:0, real WebSocket clients, real HTTP; each test performs the attack and
//! asserts what the attacker and the victims see).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lattice_server::config::TEST_ADMIN_TOKEN;
use lattice_server::Config;
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

// ---------------------------------------------------------------------------------------------
// 3. Origin check

/// Attack: a web page (any site the user visits) opens a WebSocket to the server. Asserts: an
/// upgrade with a foreign `Origin` is refused with HTTP 403; one without `Origin` (native
/// clients) and one from an allow-listed origin are accepted and can register.
#[tokio::test]
async fn browser_origins_are_refused_unless_allow_listed() {
    let server = spawn_with(Config {
        allow_origin: vec!["https://chat.example.org".into()],
        ..Config::for_tests()
    })
    .await;
    let url = server.url();
    let with_origin = |origin: &str| {
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        req
    };
    for evil in ["https://evil.example", "http://localhost:3005", "null"] {
        match tokio_tungstenite::connect_async(with_origin(evil)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 403, "{evil}");
            }
            other => panic!("{evil}: expected HTTP 403, got {other:?}"),
        }
    }
    // native: no Origin
    let (mut native, _) = register_unverified(&url, "native").await;
    // allow-listed
    let (ws, _) = tokio_tungstenite::connect_async(with_origin("https://chat.example.org"))
        .await
        .expect("an allow-listed origin is accepted");
    let mut web = Client { ws };
    let key = json!(kem_key(&new_identity()));
    web.send(unverified_register("web", &key)).await;
    assert_eq!(web.recv_type("register").await["payload"]["success"], true);
    let d = native
        .request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    assert_eq!(d["payload"]["peers"], json!(["native", "web"]));
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. File modes

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Attack: another local user reads the server's database (bindings and sealed mail). Asserts:
/// the data directory is created 0700 and the database, `-wal` and `-shm` 0600; a start after
/// someone loosened them puts them back.
#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_and_database_are_private_and_fixed_on_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("data");
    let config = || Config {
        data_dir: Some(dir.clone()),
        ..Config::for_tests()
    };
    let db = dir.join("lattice-server.sqlite3");
    let wal = dir.join("lattice-server.sqlite3-wal");
    let shm = dir.join("lattice-server.sqlite3-shm");
    let check = || {
        assert_eq!(mode(&dir), 0o700, "data directory");
        for f in [&db, &wal, &shm] {
            if f.exists() {
                assert_eq!(mode(f), 0o600, "{}", f.display());
            }
        }
        assert!(db.exists());
    };

    let server = spawn_with(config()).await;
    // write something (a binding) so the WAL exists
    let _bob = register_verified(&server.url(), "bob", &new_identity()).await;
    assert!(wal.exists() && shm.exists());
    check();
    server.shutdown().await;

    for f in [&db, &wal, &shm] {
        if f.exists() {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = spawn_with(config()).await;
    check();
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Admin token and demo conversations

/// Attack: an operator sets a guessable admin token. Asserts: the server refuses to start with a
/// clear error.
#[tokio::test]
async fn a_short_admin_token_is_refused_at_start() {
    let err = lattice_server::spawn(Config {
        admin_token: Some("hunter2-hunter2".into()),
        ..Config::for_tests()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("at least 32 characters"), "{err}");
}

/// `--admin-token-file`: generated once (0600), then read back; the API accepts that token.
#[tokio::test]
async fn an_admin_token_file_is_generated_privately_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    let config = || Config {
        admin_token: None,
        admin_token_file: Some(file.clone()),
        ..Config::for_tests()
    };
    let server = spawn_with(config()).await;
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(token.len() >= 32);
    #[cfg(unix)]
    assert_eq!(mode(&file), 0o600);
    let status = |server: &lattice_server::ServerHandle, token: String| {
        let url = format!("{}/admin/peers", server.admin_url());
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(&server, token.clone()).await, 200);
    server.shutdown().await;
    // a restart reads the same token
    let server = spawn_with(config()).await;
    assert_eq!(status(&server, token).await, 200);
    server.shutdown().await;
}

/// Attack: guessing the admin token online. Asserts: after the free failures, the source gets
/// 429 with `Retry-After`, even with the right token, instead of another guess.
#[tokio::test]
async fn failed_admin_logins_back_off_with_429() {
    let server = spawn_server().await;
    let url = format!("{}/admin/peers", server.admin_url());
    let http = reqwest::Client::new();
    let get = |token: &str| http.get(&url).bearer_auth(token).send();
    let mut statuses = Vec::new();
    for i in 0..(lattice_server::limits::ADMIN_FREE_FAILURES + 1) {
        statuses.push(get(&format!("guess-{i}")).await.unwrap().status().as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let r = get(TEST_ADMIN_TOKEN).await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        429,
        "backing off, even for the right token"
    );
    assert!(r.headers().contains_key("retry-after"));
    server.shutdown().await;
}
