//! Security end to end: TLS on both connections (verified, refused, never downgraded),
//! credentials sent and never shown, and the least privileges the README lists.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{ensure, Result};
use base64::Engine;
use cdc_indexer::testkit::sample::{create_shop_schema, run_transaction, Sample};
use cdc_indexer::testkit::tls::{ProxyOptions, TestPki, TlsProxy};
use cdc_indexer::testkit::{shared_es, shared_mysql, unique_name, MariaDbServer};
use mysql_async::prelude::Queryable;

use crate::harness::{wait_exact, Indexer, PHONE_HASH_KEY};

const CATCH_UP: Duration = Duration::from_secs(120);
const FAIL_FAST: Duration = Duration::from_secs(60);

/// One CA and one MariaDB offering TLS with it, shared by this module's tests.
fn tls_mysql() -> &'static (TestPki, MariaDbServer) {
    static SHARED: OnceLock<(TestPki, MariaDbServer)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let pki = TestPki::generate().expect("generating the test CA");
        let server = MariaDbServer::start_with_tls(Some((&pki.ca(), &pki.server_cert(), &pki.server_key())))
            .expect("starting MariaDB with TLS");
        (pki, server)
    })
}

/// osmem is plain HTTP; the proxy cannot front an external (https) cluster.
fn external_es() -> bool {
    std::env::var("ES_URL").is_ok_and(|u| !u.is_empty())
}

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// Creates `user` with `password` and runs `grants` (each with `{user}` substituted).
async fn create_user(conn: &mut mysql_async::Conn, user: &str, password: &str, grants: &[String]) -> Result<()> {
    conn.query_drop(format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
        .await?;
    for g in grants {
        conn.query_drop(g.replace("{user}", &format!("'{user}'@'%'"))).await?;
    }
    Ok(())
}

fn tls_section(section: &str, ca: &Path, client: Option<(&Path, &Path)>, mode: Option<&str>) -> String {
    let mut s = format!("\n[{section}]\nca_file = \"{}\"\n", ca.display());
    if let Some(m) = mode {
        s.push_str(&format!("mode = \"{m}\"\n"));
    }
    if let Some((cert, key)) = client {
        s.push_str(&format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    s
}

/// TLS everywhere, as production should run: MariaDB verified by CA and host name with a
/// client certificate (the user `REQUIRE X509`), Elasticsearch over https with a client
/// certificate and basic auth checked by the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_identity_tls_and_credentials_work_end_to_end() -> Result<()> {
    if external_es() {
        eprintln!("skipped: the TLS proxy fronts the test kit's own osmem only");
        return Ok(());
    }
    // GIVEN MariaDB offering TLS, a user that must present a client certificate, and
    // Elasticsearch behind a TLS proxy that demands a client certificate and a password
    let (pki, server) = tls_mysql();
    let es_target = shared_es();
    let es = es_target.client()?;
    let db = unique_name("e2e_tls");
    let prefix = format!("{db}_");
    let mut conn = server.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;
    Sample::generate(11, 40).load(&mut conn, &db).await?;
    let user = unique_name("tls");
    create_user(
        &mut conn,
        &user,
        "Tls-mysql-pw-3e1c",
        &[
            "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {user}".into(),
            format!("GRANT SELECT ON `{db}`.* TO {{user}}"),
            "ALTER USER {user} REQUIRE X509".into(),
        ],
    )
    .await?;
    let proxy = TlsProxy::start(
        es_target.url(),
        ProxyOptions {
            cert: pki.server_cert(),
            key: pki.server_key(),
            client_ca: Some(pki.ca()),
            expect_authorization: Some(basic("cdc_writer", "Es-pw-77a0")),
        },
    )?;
    let client = Some((pki.client_cert(), pki.client_key()));
    let client = client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let extra = tls_section("source.tls", &pki.ca(), client, Some("verify_identity"))
        + &tls_section("sink.tls", &pki.ca(), client, None);
    let url = format!("mysql://{user}@127.0.0.1:{}", server.port());
    let mut indexer = Indexer::new(&url, proxy.url(), &db, &prefix, &extra)?;
    let pw_file = indexer.dir.path().join("mysql-password");
    std::fs::write(&pw_file, "Tls-mysql-pw-3e1c\n")?;
    indexer.env = vec![
        ("CDC_SOURCE__PASSWORD_FILE".into(), pw_file.display().to_string()),
        ("CDC_SINK__USERNAME".into(), "cdc_writer".into()),
        ("CDC_SINK__PASSWORD_ENV".into(), "E2E_ES_PASSWORD".into()),
        ("E2E_ES_PASSWORD".into(), "Es-pw-77a0".into()),
    ];

    // WHEN the indexer loads the rows, and more change while it streams
    indexer.start()?;
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;
    run_transaction(
        &mut conn,
        &[format!("UPDATE `{db}`.orders SET remark = '加急' WHERE id <= 5")],
    )
    .await?;

    // THEN every row reaches the index, every request carried the credentials, and the
    // source connection was TLS with the client certificate (the user requires X509)
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;
    ensure!(
        proxy.forwarded() > 0 && proxy.rejected() == 0,
        "forwarded {}, rejected {}",
        proxy.forwarded(),
        proxy.rejected()
    );
    ensure!(indexer.stop()?.success(), "clean stop: {}", indexer.log());
    Ok(())
}

/// A wrong CA on either side, or `required` against a server without TLS, stops the indexer
/// with the fix named; nothing falls back to plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_are_fatal_and_name_the_fix() -> Result<()> {
    let (pki, server) = tls_mysql();
    let es_target = shared_es();
    let db = unique_name("e2e_tlsbad");
    let prefix = format!("{db}_");
    let mut conn = server.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;

    // GIVEN the MariaDB certificate checked against an unrelated CA
    // WHEN the indexer starts THEN it fails naming source.tls.ca_file, not falling back
    let extra = tls_section("source.tls", &pki.other_ca(), None, Some("verify_identity"));
    let mut indexer = Indexer::new(&server.url(), es_target.url(), &db, &prefix, &extra)?;
    indexer.start()?;
    let status = indexer.exit_status(FAIL_FAST).await?;
    let log = indexer.log();
    ensure!(!status.success(), "must refuse: {log}");
    ensure!(
        log.contains("invalid peer certificate") && log.contains("set source.tls.ca_file"),
        "unexpected message:\n{log}"
    );

    // GIVEN mode `required` against a server that offers no TLS
    // WHEN the indexer starts THEN it fails saying the server offers no TLS
    let plain = shared_mysql();
    let mut plain_conn = plain.root_conn().await?;
    create_shop_schema(&mut plain_conn, &db).await?;
    let extra = "\n[source.tls]\nmode = \"required\"\n";
    let mut indexer = Indexer::new(plain.url(), es_target.url(), &db, &prefix, extra)?;
    indexer.start()?;
    let status = indexer.exit_status(FAIL_FAST).await?;
    let log = indexer.log();
    ensure!(!status.success(), "must refuse: {log}");
    ensure!(
        log.contains("does not offer TLS") || external_plain_server_has_tls(&log),
        "unexpected message:\n{log}"
    );

    if external_es() {
        return Ok(());
    }
    // GIVEN Elasticsearch over https with a certificate from a CA the indexer does not trust
    // WHEN the indexer starts THEN it fails naming sink.tls.ca_file
    let proxy = TlsProxy::start(
        es_target.url(),
        ProxyOptions {
            cert: pki.server_cert(),
            key: pki.server_key(),
            client_ca: None,
            expect_authorization: None,
        },
    )?;
    let extra = tls_section("sink.tls", &pki.other_ca(), None, None);
    let mut indexer = Indexer::new(&server.url(), proxy.url(), &db, &prefix, &extra)?;
    indexer.start()?;
    let status = indexer.exit_status(FAIL_FAST).await?;
    let log = indexer.log();
    ensure!(!status.success(), "must refuse: {log}");
    ensure!(
        log.contains("invalid peer certificate") && log.contains("set sink.tls.ca_file"),
        "unexpected message:\n{log}"
    );
    ensure!(proxy.forwarded() == 0, "no request may pass an untrusted TLS session");
    Ok(())
}

/// An external server (CDC_MYSQL_URL) may offer TLS, so `required` succeeds there.
fn external_plain_server_has_tls(log: &str) -> bool {
    std::env::var("CDC_MYSQL_URL").is_ok_and(|u| !u.is_empty()) && !log.contains("TLS to")
}

/// Known secrets (MySQL password, Elasticsearch password, phone hash key) never appear in
/// anything the indexer writes: logs at debug level, `status` output, state files, and the
/// errors of failed start-ups (wrong Elasticsearch password: 401 is fatal and named).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_any_output() -> Result<()> {
    if external_es() {
        eprintln!("skipped: the auth-checking proxy fronts the test kit's own osmem only");
        return Ok(());
    }
    // GIVEN secrets given the supported ways (env variables and files), and an indexer
    // logging everything at debug level
    let (pki, _) = tls_mysql();
    let mysql = shared_mysql();
    let es_target = shared_es();
    let es = es_target.client()?;
    let db = unique_name("e2e_secrets");
    let prefix = format!("{db}_");
    let mut conn = mysql.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;
    Sample::generate(5, 20).load(&mut conn, &db).await?;
    let (mysql_pw, es_pw, wrong_pw) = ("My-Sql-Secret-5a9d", "Es-Secret-c04f", "Wrong-Secret-81be");
    let user = unique_name("sec");
    create_user(
        &mut conn,
        &user,
        mysql_pw,
        &[
            "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {user}".into(),
            format!("GRANT SELECT ON `{db}`.* TO {{user}}"),
        ],
    )
    .await?;
    let proxy = TlsProxy::start(
        es_target.url(),
        ProxyOptions {
            cert: pki.server_cert(),
            key: pki.server_key(),
            client_ca: None,
            expect_authorization: Some(basic("cdc_writer", es_pw)),
        },
    )?;
    let host = mysql
        .url()
        .rsplit_once('@')
        .map(|(_, h)| h.to_string())
        .unwrap_or_default();
    let url = format!("mysql://{user}@{host}");
    let extra = tls_section("sink.tls", &pki.ca(), None, None);
    let mut indexer = Indexer::new(&url, proxy.url(), &db, &prefix, &extra)?;
    let env = |es_password: &str| -> Vec<(String, String)> {
        vec![
            ("CDC_LOG".into(), "debug".into()),
            ("CDC_SOURCE__PASSWORD_ENV".into(), "E2E_MYSQL_PASSWORD".into()),
            ("E2E_MYSQL_PASSWORD".into(), mysql_pw.into()),
            ("CDC_SINK__USERNAME".into(), "cdc_writer".into()),
            ("CDC_SINK__PASSWORD_ENV".into(), "E2E_ES_PASSWORD".into()),
            ("E2E_ES_PASSWORD".into(), es_password.into()),
        ]
    };
    indexer.env = env(es_pw);

    // WHEN it indexes the rows and stops, `status` runs (text and JSON), and it is started
    // again with a wrong Elasticsearch password
    indexer.start()?;
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;
    ensure!(indexer.stop()?.success(), "clean stop: {}", indexer.log());
    let mut outputs = vec![indexer.log()];
    for args in [&["status"][..], &["status", "--json"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cdc-indexer"))
            .args(args)
            .arg("--config")
            .arg(indexer.config_path())
            .envs(env(es_pw))
            .output()?;
        ensure!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    indexer.env = env(wrong_pw);
    indexer.start()?;
    let status = indexer.exit_status(FAIL_FAST).await?;
    let failed = indexer.log();
    ensure!(!status.success(), "a wrong password must stop the indexer: {failed}");
    ensure!(
        failed.contains("HTTP 401") && failed.contains("sink.password_env"),
        "the 401 must be fatal and name the fix:\n{failed}"
    );
    outputs.push(failed);

    // THEN no output and no state file holds any secret, in clear or as a Basic token
    for entry in std::fs::read_dir(indexer.dir.path().join("state"))? {
        outputs.push(String::from_utf8_lossy(&std::fs::read(entry?.path())?).into_owned());
    }
    let secrets = [
        mysql_pw.to_string(),
        es_pw.to_string(),
        wrong_pw.to_string(),
        basic("cdc_writer", es_pw)["Basic ".len()..].to_string(),
        basic("cdc_writer", wrong_pw)["Basic ".len()..].to_string(),
        PHONE_HASH_KEY.to_string(),
    ];
    for (i, out) in outputs.iter().enumerate() {
        for s in &secrets {
            ensure!(!out.contains(s.as_str()), "output {i} contains a secret:\n{out}");
        }
    }
    ensure!(outputs[0].contains("DEBUG"), "the run must have logged at debug level");
    Ok(())
}

/// The grants the README lists are enough, and a missing REPLICATION SLAVE is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_grants_suffice_and_a_missing_grant_is_named() -> Result<()> {
    // GIVEN a user with exactly the README's grants: REPLICATION SLAVE and REPLICATION CLIENT
    // on *.*, SELECT on the tracked tables, INSERT and DELETE on the heartbeat table
    let mysql = shared_mysql();
    let es_target = shared_es();
    let es = es_target.client()?;
    let db = unique_name("e2e_grants");
    let prefix = format!("{db}_");
    let mut conn = mysql.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;
    Sample::generate(3, 30).load(&mut conn, &db).await?;
    conn.query_drop(format!(
        "CREATE TABLE `{db}`.cdc_heartbeat (id INT UNSIGNED NOT NULL PRIMARY KEY, ts_ms BIGINT UNSIGNED NOT NULL)"
    ))
    .await?;
    let user = unique_name("min");
    create_user(
        &mut conn,
        &user,
        "Min-pw-1",
        &[
            "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {user}".into(),
            format!("GRANT SELECT ON `{db}`.orders TO {{user}}"),
            format!("GRANT SELECT ON `{db}`.event_log TO {{user}}"),
            format!("GRANT INSERT, DELETE ON `{db}`.cdc_heartbeat TO {{user}}"),
        ],
    )
    .await?;
    let host = mysql
        .url()
        .rsplit_once('@')
        .map(|(_, h)| h.to_string())
        .unwrap_or_default();
    let mut indexer = Indexer::new(&format!("mysql://{user}@{host}"), es_target.url(), &db, &prefix, "")?;
    indexer.env = vec![
        ("CDC_SOURCE__PASSWORD_ENV".into(), "E2E_MYSQL_PASSWORD".into()),
        ("E2E_MYSQL_PASSWORD".into(), "Min-pw-1".into()),
        ("CDC_SOURCE__HEARTBEAT_TABLE".into(), format!("{db}.cdc_heartbeat")),
    ];

    // WHEN it runs THEN it loads and streams exactly, and the heartbeat row is written
    indexer.start()?;
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;
    run_transaction(&mut conn, &[format!("DELETE FROM `{db}`.orders WHERE id <= 3")]).await?;
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;
    let beats: Option<u64> = conn
        .query_first(format!("SELECT COUNT(*) FROM `{db}`.cdc_heartbeat"))
        .await?;
    ensure!(beats == Some(1), "heartbeat row missing: {}", indexer.log());
    ensure!(
        !indexer.log().contains("heartbeat write failed"),
        "heartbeat writes failed: {}",
        indexer.log()
    );
    ensure!(indexer.stop()?.success(), "clean stop: {}", indexer.log());

    // GIVEN the same user without REPLICATION SLAVE
    conn.query_drop(format!("REVOKE REPLICATION SLAVE ON *.* FROM '{user}'@'%'"))
        .await?;
    std::fs::remove_dir_all(indexer.dir.path().join("state"))?;
    let prefix2 = format!("{db}_b_");
    let mut indexer2 = Indexer::new(&format!("mysql://{user}@{host}"), es_target.url(), &db, &prefix2, "")?;
    indexer2.env = indexer.env.clone();
    // WHEN it starts THEN it refuses before loading anything, naming the grant
    indexer2.start()?;
    let status = indexer2.exit_status(FAIL_FAST).await?;
    let log = indexer2.log();
    ensure!(!status.success(), "must refuse: {log}");
    ensure!(
        log.contains("lacks REPLICATION SLAVE") && log.contains("GRANT REPLICATION SLAVE ON *.*"),
        "unexpected message:\n{log}"
    );
    ensure!(
        es.count(&format!("{prefix2}orders")).await.unwrap_or(0) == 0,
        "nothing may be loaded"
    );
    Ok(())
}
