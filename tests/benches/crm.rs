//! CRM API under load on PostgreSQL: 100,000 clients, 1,000,000
//! interactions on their cards, `wrk` reading random client cards and
//! searching clients through the real `switchboard crm-api` binary.
//!
//! Needs PostgreSQL (`SWITCHBOARD_TEST_POSTGRES`), `wrk`, and the release
//! binary: `cargo build --release -p switchboard && cargo bench -p
//! switchboard-tests --bench crm`. Sizes: `CRM_BENCH_CLIENTS` (100000),
//! `CRM_BENCH_PER_CLIENT` (10 interactions), `CRM_BENCH_SECONDS` (10).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use sqlx::Connection;
use switchboard_crm::testing::TestDatabase;
use switchboard_tests::Launch;
use switchboard_tests::{env_usize, wrk};

/// Seeds with set-based SQL (PostgreSQL), far faster than the API would.
async fn seed(url: &str, clients: usize, per_client: usize) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let started = Instant::now();
    let statements = [
        format!(
            "INSERT INTO clients (id, kind, status, name, owner_id, department_id, source, search_text, \
             created_at, updated_at, promoted_at, version) \
             SELECT '00000000-0000-7000-8000-' || lpad(i::text, 12, '0'), 'person', 'current', 'Client ' || i, \
             NULL, NULL, 'seed', lower('client ' || i) || ' +7916' || lpad(i::text, 7, '0'), \
             1700000000000000 + i, 1700000000000000 + i, NULL, 1 FROM generate_series(1, {clients}) AS i"
        ),
        format!(
            "INSERT INTO identities (kind, value, client_id, contact_person_id, created_at) \
             SELECT 'phone', '+7916' || lpad(i::text, 7, '0'), '00000000-0000-7000-8000-' || lpad(i::text, 12, '0'), \
             NULL, 0 FROM generate_series(1, {clients}) AS i"
        ),
        format!(
            "INSERT INTO interactions (id, contact_key, kind, channel, occurred_at, recorded_at, envelope, client_id) \
             SELECT '00000000-0000-7001-8000-' || lpad(n::text, 12, '0'), 'tel:+7916' || lpad(c::text, 7, '0'), \
             'message.received', 'telegram', 1700000000000000 + n * 1000, 1700000000000000 + n * 1000, \
             json_build_object('v', 1, 'id', '00000000-0000-7001-8000-' || lpad(n::text, 12, '0'), \
               'occurred_at', '2026-11-26T10:00:00Z', 'recorded_at', '2026-11-26T10:00:00Z', \
               'kind', 'message.received', 'channel', 'telegram', \
               'contact', json_build_object('key', 'tel:+7916' || lpad(c::text, 7, '0'), 'phone', '+7916' || lpad(c::text, 7, '0')), \
               'payload', json_build_object('text', 'Hello, I would like to know more about the annual plan, message ' || n))::text, \
             '00000000-0000-7000-8000-' || lpad(c::text, 12, '0') \
             FROM (SELECT n, (n % {clients}) + 1 AS c FROM generate_series(1, {total}) AS n) s",
            total = clients * per_client
        ),
        "INSERT INTO timeline_entries (id, client_id, at, kind, ref_id, body) \
         SELECT id, client_id, occurred_at, 'interaction', id, envelope FROM interactions"
            .to_owned(),
        "ANALYZE".to_owned(),
    ];
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    println!(
        "seeded {clients} clients and {} interactions in {:.0?}",
        clients * per_client,
        started.elapsed()
    );
}

#[tokio::main]
async fn main() {
    let clients = env_usize("CRM_BENCH_CLIENTS", 100_000);
    let per_client = env_usize("CRM_BENCH_PER_CLIENT", 10);
    let seconds = env_usize("CRM_BENCH_SECONDS", 10);

    let db = TestDatabase::create()
        .await
        .expect("PostgreSQL must be running");
    // Let the store create its schema, then seed.
    switchboard_crm::Store::connect(&db.url, 1)
        .await
        .unwrap()
        .close()
        .await;
    seed(&db.url, clients, per_client).await;

    let dir = tempfile::tempdir().unwrap();
    let sb = Launch::new(dir.path())
        .command("crm-api")
        .env("SWITCHBOARD_CRM__DATABASE_URL", db.url.clone())
        .env("SWITCHBOARD_LOG__LEVEL", "warn,switchboard=info")
        .start()
        .await
        .unwrap();
    let base = format!("http://{}", sb.crm.unwrap());
    let token = sb.token.clone();

    // Sanity: a card answers before it is loaded.
    let (status, body) = sb
        .crm_get("/v1/clients/00000000-0000-7000-8000-000000000001/timeline?limit=20")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"].as_array().unwrap().len(), per_client.min(20));

    let timeline = wrk(
        &base,
        &format!(
            "math.randomseed(42)\nrequest = function()\n  local i = math.random(1, {clients})\n  \
             return wrk.format('GET', string.format('/v1/clients/00000000-0000-7000-8000-%012d/timeline?limit=20', i), \
             {{['Authorization'] = 'Bearer {token}'}})\nend\n"
        ),
        seconds,
        32,
    );
    println!(
        "timeline: {:.0} requests/s, p99 {:.2} ms, {} non-2xx (wrk -t2 -c32, 20 entries a page)",
        timeline.rps, timeline.p99_ms, timeline.errors
    );
    let search = wrk(
        &base,
        &format!(
            "math.randomseed(7)\nrequest = function()\n  local i = math.random(1, {clients})\n  \
             return wrk.format('GET', string.format('/v1/clients?q=%07d&limit=20', i), \
             {{['Authorization'] = 'Bearer {token}'}})\nend\n"
        ),
        seconds,
        32,
    );
    println!(
        "search: {:.0} requests/s, p99 {:.2} ms, {} non-2xx (phone digits, trigram index)",
        search.rps, search.p99_ms, search.errors
    );
    sb.terminate(Duration::from_secs(20)).await.unwrap();
    db.drop_now().await.unwrap();
    println!(
        "BENCH timeline_rps={:.0} timeline_p99_ms={:.2} search_rps={:.0} search_p99_ms={:.2}",
        timeline.rps, timeline.p99_ms, search.rps, search.p99_ms
    );
}
