//! The embedded log: ordering, group commit, consumer groups, durability,
//! pruning and readers in other processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use switchboard_storage::{FeedLog, FeedSource, LogConsumer, LogOptions, NewRecord, Record, Topic};

fn rec(topic: Topic, key: &str, value: &str) -> NewRecord {
    NewRecord {
        topic,
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

/// A log in a new directory (kept while the directory lives).
fn fresh_log() -> (tempfile::TempDir, FeedLog) {
    let dir = tempfile::tempdir().unwrap();
    let log = FeedLog::open(&dir.path().join("feed.sqlite"), LogOptions::default()).unwrap();
    (dir, log)
}

async fn drain(c: &mut LogConsumer, want: usize) -> Vec<Record> {
    let mut out = Vec::new();
    while out.len() < want {
        let batch = c.poll(1000, Duration::from_secs(5)).await.unwrap();
        assert!(
            !batch.is_empty(),
            "only {} of {want} records arrived",
            out.len()
        );
        out.extend(batch);
    }
    out
}

#[tokio::test]
async fn appends_are_ordered_and_groups_resume_after_commit() {
    let (_dir, log) = fresh_log();
    let mut offsets = Vec::new();
    for i in 0..10 {
        offsets.push(
            log.append(rec(Topic::Interactions, "k", &format!("v{i}")))
                .await
                .unwrap(),
        );
    }
    log.append(rec(Topic::Commands, "t", "cmd")).await.unwrap();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");

    let mut c = log.consumer("crm", &[Topic::Interactions]).unwrap();
    let first = c.poll(4, Duration::ZERO).await.unwrap();
    assert_eq!(
        first.iter().map(|r| r.value.as_slice()).collect::<Vec<_>>(),
        [b"v0", b"v1", b"v2", b"v3"]
    );
    assert!(
        first
            .iter()
            .all(|r| r.topic == "interactions" && r.key == "k")
    );
    c.commit(&first).await.unwrap();
    let second = c.poll(2, Duration::ZERO).await.unwrap();
    assert_eq!(second[0].value, b"v4");
    drop(c); // v4 and v5 were read but never committed

    let mut again = log.consumer("crm", &[Topic::Interactions]).unwrap();
    let rest = drain(&mut again, 6).await;
    assert_eq!(rest[0].value, b"v4", "resumes after the last commit");
    assert!(
        again.poll(10, Duration::ZERO).await.unwrap().is_empty(),
        "commands topic leaked"
    );

    let mut other = log
        .consumer("analytics", &[Topic::Interactions, Topic::Commands])
        .unwrap();
    let all = drain(&mut other, 11).await;
    assert_eq!(
        all.last().unwrap().topic,
        "commands",
        "a new group starts at the beginning"
    );
}

#[tokio::test]
async fn concurrent_producers_share_commits_and_lose_nothing() {
    let (_dir, log) = fresh_log();
    let mut tasks = Vec::new();
    for t in 0..50 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..200 {
                let o = log
                    .append(rec(
                        Topic::Interactions,
                        &format!("key-{t}"),
                        &format!("{t}/{i}"),
                    ))
                    .await
                    .unwrap();
                offsets.push(o);
            }
            offsets
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for o in t.await.unwrap() {
            assert!(seen.insert(o), "offset {o} given twice");
        }
    }
    let mut c = log.consumer("crm", &[Topic::Interactions]).unwrap();
    let records = drain(&mut c, 10_000).await;
    let values: HashSet<Vec<u8>> = records.iter().map(|r| r.value.clone()).collect();
    assert_eq!(values.len(), 10_000);
    // Per key, records are in the order each producer appended them.
    for t in 0..50 {
        let key = format!("key-{t}");
        let seq: Vec<String> = records
            .iter()
            .filter(|r| r.key == key)
            .map(|r| String::from_utf8(r.value.clone()).unwrap())
            .collect();
        let want: Vec<String> = (0..200).map(|i| format!("{t}/{i}")).collect();
        assert_eq!(seq, want);
    }
}

#[tokio::test]
async fn records_and_offsets_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/feed.sqlite");
    {
        let log = FeedLog::open(&path, LogOptions::default()).unwrap();
        log.append_batch(
            (0..100)
                .map(|i| rec(Topic::Interactions, "k", &i.to_string()))
                .collect(),
        )
        .await
        .unwrap();
        let mut c = log.consumer("crm", &[Topic::Interactions]).unwrap();
        let batch = c.poll(60, Duration::ZERO).await.unwrap();
        c.commit(&batch).await.unwrap();
    }
    let log = FeedLog::open(&path, LogOptions::default()).unwrap();
    assert_eq!(log.last_offset(), 100);
    let mut c = log.consumer("crm", &[Topic::Interactions]).unwrap();
    let rest = drain(&mut c, 40).await;
    assert_eq!(rest[0].value, b"60");
    let next = log
        .append(rec(Topic::Interactions, "k", "after"))
        .await
        .unwrap();
    assert_eq!(next, 101);
}

#[tokio::test]
async fn batches_handed_over_before_any_commit_keep_their_order() {
    let (_dir, log) = fresh_log();
    // Ten batches of three are handed over before the first is awaited.
    let mut pending = Vec::new();
    for b in 0..10 {
        let batch = (0..3)
            .map(|i| rec(Topic::Interactions, "k", &format!("b{b}r{i}")))
            .collect();
        pending.push(log.submit_batch(batch).await.unwrap());
    }
    let mut offsets = Vec::new();
    for p in pending {
        offsets.extend(p.committed().await.unwrap());
    }
    assert_eq!(offsets.len(), 30);
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
    let mut c = log.consumer("crm", &[Topic::Interactions]).unwrap();
    let read: Vec<String> = drain(&mut c, 30)
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.value).unwrap())
        .collect();
    let handed: Vec<String> = (0..10)
        .flat_map(|b| (0..3).map(move |i| format!("b{b}r{i}")))
        .collect();
    assert_eq!(read, handed, "the feed holds the batches as handed over");
}

#[tokio::test]
async fn a_waiting_consumer_is_woken_by_an_append() {
    let (_dir, log) = fresh_log();
    let mut c = log.consumer("crm", &[Topic::Interactions]).unwrap();
    let started = std::time::Instant::now();
    let waiter = tokio::spawn(async move { c.poll(10, Duration::from_secs(30)).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.append(rec(Topic::Interactions, "k", "hello"))
        .await
        .unwrap();
    let got = waiter.await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "consumer slept through the append"
    );
}

#[tokio::test]
async fn rewind_returns_uncommitted_records_again() {
    let (_dir, log) = fresh_log();
    log.append_batch(
        (0..5)
            .map(|i| rec(Topic::Interactions, "k", &i.to_string()))
            .collect(),
    )
    .await
    .unwrap();
    let mut c = log.consumer("relay", &[Topic::Interactions]).unwrap();
    let a = c.poll(2, Duration::ZERO).await.unwrap();
    c.commit(&a).await.unwrap();
    let b = c.poll(10, Duration::ZERO).await.unwrap();
    assert_eq!(b.len(), 3);
    c.rewind().await.unwrap();
    let again = c.poll(10, Duration::ZERO).await.unwrap();
    assert_eq!(again, b);
}

#[tokio::test]
async fn pruning_never_reuses_offsets() {
    let (_dir, log) = fresh_log();
    let offsets = log
        .append_batch(
            (0..30)
                .map(|i| rec(Topic::Interactions, "k", &i.to_string()))
                .collect(),
        )
        .await
        .unwrap();
    // A group that must keep its records holds pruning back until it commits.
    let retain = ["routing".to_owned()];
    assert_eq!(log.prune_below(offsets[29] + 1, &retain).await.unwrap(), 0);
    let mut routing = log.consumer("routing", &[Topic::Interactions]).unwrap();
    let first = routing.poll(10, Duration::ZERO).await.unwrap();
    routing.commit(&first).await.unwrap();
    assert_eq!(log.prune_below(offsets[29] + 1, &retain).await.unwrap(), 10);
    let deleted = 10 + log.prune_below(offsets[29] + 1, &[]).await.unwrap();
    assert_eq!(deleted, 30);
    let next = log
        .append(rec(Topic::Interactions, "k", "new"))
        .await
        .unwrap();
    assert!(next > offsets[29], "offset {next} reused after pruning");
    let mut c = log.consumer("late", &[Topic::Interactions]).unwrap();
    let got = c.poll(100, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value, b"new");
}

/// Runs as a child process (see `readers_in_other_processes_see_every_record`):
/// reads the log with its own group and prints what it saw.
#[test]
fn child_reader() {
    let Ok(path) = std::env::var("FEED_CHILD_PATH") else {
        return; // only meaningful when spawned by the test below
    };
    let want: usize = std::env::var("FEED_CHILD_WANT").unwrap().parse().unwrap();
    let group = std::env::var("FEED_CHILD_GROUP").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let opts = LogOptions {
            poll_interval: Duration::from_millis(10),
            ..LogOptions::default()
        };
        let mut c = LogConsumer::open(path.as_ref(), &group, &[Topic::Interactions], opts).unwrap();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while got.len() < want && std::time::Instant::now() < deadline {
            let batch = c.poll(500, Duration::from_millis(200)).await.unwrap();
            c.commit(&batch).await.unwrap();
            got.extend(
                batch
                    .into_iter()
                    .map(|r| String::from_utf8(r.value).unwrap()),
            );
        }
        let in_order = got.iter().enumerate().all(|(i, v)| *v == i.to_string());
        println!("\nCHILD-RESULT count={} in_order={in_order}", got.len());
    });
}

#[tokio::test]
async fn readers_in_other_processes_see_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.sqlite");
    let log = FeedLog::open(&path, LogOptions::default()).unwrap();
    let total = 3000;
    let spawn_child = |group: &str| {
        tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_reader", "--nocapture", "--test-threads=1"])
            .env("FEED_CHILD_PATH", &path)
            .env("FEED_CHILD_WANT", total.to_string())
            .env("FEED_CHILD_GROUP", group)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn_child("reader-a");
    let b = spawn_child("reader-b");
    // Append while the children read.
    for chunk in 0..30 {
        let batch = (0..100)
            .map(|i| rec(Topic::Interactions, "k", &(chunk * 100 + i).to_string()))
            .collect();
        log.append_batch(batch).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for child in [a, b] {
        let out = child.wait_with_output().await.unwrap();
        assert!(out.status.success());
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("CHILD-RESULT "))
            .unwrap_or_else(|| panic!("child printed no result: {stdout}"));
        assert_eq!(line, format!("count={total} in_order=true"));
    }
}
