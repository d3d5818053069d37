//! The queue layer and the run state against a real Redis, without worker processes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use stevedore::queue::{Delivery, Queues, RedisLink, SinkQueues};
use stevedore::run_state::{Planned, RunState, UnitDone};
use stevedore::source::WorkItem;
use testkit::TestRedis;

/// Receives at most one unit, through the batched receive the consumers use.
async fn receive_one(queues: &Queues, units: &str, visibility: Duration) -> Option<Delivery> {
    queues
        .receive_batch(units, visibility, 1)
        .await
        .unwrap()
        .pop()
}

/// `count` file work items of one source.
fn work_items(count: u64) -> Vec<WorkItem> {
    (0..count)
        .map(|index| WorkItem {
            source: "s".into(),
            index,
            origin: format!("f{index}"),
            range: None,
            bytes: None,
        })
        .collect()
}

/// Creates the unit and dead-letter queues of sink `local` of `job`.
async fn created_queues(queues: &Queues, job: &str) -> SinkQueues {
    let names = SinkQueues::new(job, "local");
    queues
        .ensure(&names.units, Duration::from_secs(30))
        .await
        .unwrap();
    queues
        .ensure(&names.dead, Duration::from_secs(30))
        .await
        .unwrap();
    names
}

fn queues(redis: &TestRedis) -> Queues {
    Queues::new(Arc::new(RedisLink::new(&redis.url()).unwrap()))
}

#[tokio::test]
async fn queue_receive_counts_deliveries_and_move_keeps_the_unit_whole() {
    let redis = TestRedis::start();
    let queues = queues(&redis);
    let names = created_queues(&queues, "poison").await;
    queues
        .send_batch(&names.units, &[b"unit-1".to_vec()])
        .await
        .unwrap();
    for attempt in 1..=3 {
        let delivery = receive_one(&queues, &names.units, Duration::ZERO)
            .await
            .expect("still deliverable");
        assert_eq!(delivery.receives, attempt);
        assert_eq!(delivery.body, b"unit-1");
    }
    let last = receive_one(&queues, &names.units, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(last.receives, 4);
    queues
        .move_message(&names.units, &last.message_id, &names.dead)
        .await
        .unwrap();
    assert_eq!(queues.depth(&names.units).await.unwrap(), 0);
    let dead = queues.read_all(&names.dead).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, b"unit-1");
}

#[tokio::test]
async fn queue_ack_and_extend_control_redelivery() {
    let redis = TestRedis::start();
    let queues = queues(&redis);
    let names = created_queues(&queues, "acks").await;
    queues
        .send_batch(&names.units, &[b"a".to_vec(), b"b".to_vec()])
        .await
        .unwrap();
    let first = receive_one(&queues, &names.units, Duration::from_secs(30))
        .await
        .unwrap();
    let second = receive_one(&queues, &names.units, Duration::ZERO)
        .await
        .unwrap();
    queues
        .extend(&names.units, &second.message_id, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        receive_one(&queues, &names.units, Duration::ZERO)
            .await
            .is_none(),
        "both are hidden now"
    );
    queues.ack(&names.units, &first.message_id).await.unwrap();
    assert_eq!(
        queues.depth(&names.units).await.unwrap(),
        1,
        "the unacknowledged unit is still owed"
    );
}

#[tokio::test]
async fn queue_client_reconnects_after_redis_restarts_on_the_same_port() {
    let mut redis = TestRedis::start_with_aof();
    let url = redis.url();
    let queues = Queues::new(Arc::new(RedisLink::new(&url).unwrap()));
    let names = created_queues(&queues, "restart").await;
    queues
        .send_batch(&names.units, &[b"before".to_vec()])
        .await
        .unwrap();

    redis.restart();
    // The old client is dead (broken pipe, then NOSCRIPT): these calls must rebuild it.
    queues
        .send_batch(&names.units, &[b"after".to_vec()])
        .await
        .unwrap();
    let mut bodies = BTreeSet::new();
    while let Some(delivery) = receive_one(&queues, &names.units, Duration::from_secs(30)).await {
        queues
            .ack(&names.units, &delivery.message_id)
            .await
            .unwrap();
        bodies.insert(delivery.body);
    }
    assert_eq!(
        bodies,
        BTreeSet::from([b"before".to_vec(), b"after".to_vec()]),
        "the AOF kept the unit sent before the crash"
    );
}

#[tokio::test]
async fn queue_work_items_are_shared_without_overlap_and_resumed_by_their_holder() {
    let redis = TestRedis::start();
    let link = Arc::new(RedisLink::new(&redis.url()).unwrap());
    let (state, resumed) = RunState::begin(link.clone(), "items", "run-1")
        .await
        .unwrap();
    assert!(!resumed);
    let items = work_items(10);
    assert_eq!(
        state.items().plan(&items, "basis A").await.unwrap(),
        Planned::New
    );
    assert_eq!(
        state.items().plan(&items, "basis A").await.unwrap(),
        Planned::Kept,
        "a plan is made once per run"
    );
    assert_eq!(
        state.items().plan(&items[..2], "basis B").await.unwrap(),
        Planned::Changed {
            planned_from: "basis A".into()
        },
        "a run is never re-planned from another basis"
    );

    let held_by_1 = state.items().claim(1).await.unwrap().unwrap();
    assert_eq!(
        state.items().claim(1).await.unwrap().unwrap(),
        held_by_1,
        "a restarted producer resumes the item it held"
    );
    let mut seen = vec![held_by_1.clone()];
    state.items().complete(1, &held_by_1, 5).await.unwrap();
    for producer in [2, 3, 2, 3, 2, 3, 2, 3, 1] {
        let item = state.items().claim(producer).await.unwrap().unwrap();
        state.items().complete(producer, &item, 5).await.unwrap();
        seen.push(item);
    }
    assert!(state.items().claim(2).await.unwrap().is_none());
    let unique: BTreeSet<u64> = seen.iter().map(|item| item.index).collect();
    assert_eq!(unique.len(), 10, "every item handed out exactly once");
    assert_eq!(state.items().unfinished_items().await.unwrap(), 0);
    assert_eq!(state.ledger().totals(&[]).await.unwrap().read, 50);

    // A second supervisor start finds the unfinished run and resumes it.
    let (again, resumed) = RunState::begin(link, "items", "run-2").await.unwrap();
    assert!(resumed);
    assert_eq!(again.run_id(), "run-1");

    again.finish(&[]).await.unwrap();
    let current: Option<String> = redis.query(redis::cmd("GET").arg("stevedore:items:current_run"));
    assert_eq!(current, None, "a finished run is no longer current");
    let ttl: i64 = redis.query(redis::cmd("TTL").arg("stevedore:items:run:run-1:read"));
    assert!(
        ttl > 0 && ttl <= stevedore::run_state::FINISHED_RUN_TTL_SECONDS,
        "finished run keys expire (ttl {ttl})"
    );
}

#[tokio::test]
async fn queue_held_items_of_dead_producers_are_released_on_resume() {
    let redis = TestRedis::start();
    let link = Arc::new(RedisLink::new(&redis.url()).unwrap());
    let (state, _) = RunState::begin(link, "release", "run-1").await.unwrap();
    let items = work_items(3);
    state.items().plan(&items, "basis").await.unwrap();
    let held = state.items().claim(7).await.unwrap().unwrap();
    assert_eq!(state.items().release_held_items().await.unwrap(), 1);
    assert_eq!(
        state.items().claim(1).await.unwrap().unwrap(),
        held,
        "the released item is next in line"
    );
    assert_eq!(state.items().unfinished_items().await.unwrap(), 3);
}

#[tokio::test]
async fn queue_an_unreadable_work_item_is_an_error_not_the_end_of_the_work() {
    let redis = TestRedis::start();
    let link = Arc::new(RedisLink::new(&redis.url()).unwrap());
    let (state, _) = RunState::begin(link, "garbled", "run-1").await.unwrap();
    state.items().plan(&work_items(1), "basis").await.unwrap();
    // An item this build cannot read (written by hand, or by another version) comes first.
    let _: i64 = redis.query(
        redis::cmd("LPUSH")
            .arg("stevedore:garbled:run:run-1:items:pending")
            .arg("{not an item"),
    );
    let error = state.items().claim(1).await.unwrap_err().to_string();
    assert!(
        error.contains("claiming a work item")
            && error.contains("stevedore:garbled:run:run-1:items:held (field 1)")
            && error.contains("{not an item"),
        "{error}"
    );
    // Not taken for "no more items": it stays held, so the run cannot end as if complete.
    assert_eq!(state.items().unfinished_items().await.unwrap(), 2);
}

#[tokio::test]
async fn queue_a_stale_completion_does_not_drop_the_item_a_new_producer_holds() {
    let redis = TestRedis::start();
    let link = Arc::new(RedisLink::new(&redis.url()).unwrap());
    let (state, _) = RunState::begin(link, "stale", "run-1").await.unwrap();
    let items = work_items(3);
    state.items().plan(&items, "basis").await.unwrap();
    // An orphaned producer-1 holds item 0; a new supervisor releases it and a new
    // producer-1 ends up holding item 1.
    let old = state.items().claim(1).await.unwrap().unwrap();
    state.items().release_held_items().await.unwrap();
    assert_eq!(state.items().claim(2).await.unwrap().unwrap(), old);
    let new = state.items().claim(1).await.unwrap().unwrap();
    assert_ne!(new, old);
    // The orphan finishes late: its count is recorded, the new holder keeps its item.
    state.items().complete(1, &old, 4).await.unwrap();
    assert_eq!(
        state.items().claim(1).await.unwrap().unwrap(),
        new,
        "producer-1 still holds its item"
    );
    // Producer 2 still holds item 0 (it redoes it harmlessly: unit ids are deterministic).
    assert_eq!(state.items().unfinished_items().await.unwrap(), 3);
}

#[tokio::test]
async fn queue_record_and_ack_is_one_step_and_a_fenced_writer_gets_neither() {
    let redis = TestRedis::start();
    let queues = queues(&redis);
    let names = created_queues(&queues, "fold").await;
    queues
        .send_batch(&names.units, &[b"unit-a".to_vec(), b"unit-b".to_vec()])
        .await
        .unwrap();
    let first = receive_one(&queues, &names.units, Duration::from_secs(30))
        .await
        .unwrap();
    let second = receive_one(&queues, &names.units, Duration::from_secs(30))
        .await
        .unwrap();
    // The job's lock has reached token 7.
    redis.query::<()>(redis::cmd("SET").arg("stevedore:fold:fence").arg(7));
    let link = queues.link().clone();
    let current = RunState::new(link.clone(), "fold", "r1").fenced(7);
    let stale = RunState::new(link, "fold", "r1").fenced(6);
    let done = |unit| UnitDone {
        unit,
        written: 3,
        dead: 1,
        fresh: true,
    };

    let refused = stale
        .ledger()
        .record_unit_and_ack("local", &done("u/a"), &names.units, &first.message_id)
        .await
        .expect_err("token 6 is older than the job's 7");
    assert!(refused.is_fenced(), "{refused}");
    current
        .ledger()
        .record_unit_and_ack("local", &done("u/b"), &names.units, &second.message_id)
        .await
        .unwrap();

    // The stale writer recorded nothing and left its message to be redelivered; the current
    // one recorded its counts and progress, and its message is gone with its receive count.
    let written = current.ledger().written_units("local").await.unwrap();
    assert_eq!(
        written.into_iter().collect::<Vec<_>>(),
        [("u/b".to_string(), 3)]
    );
    let totals = current.ledger().totals(&["local".into()]).await.unwrap();
    assert_eq!(totals.dead["local"], 1);
    let progress = current.ledger().progress().await.unwrap();
    assert_eq!((progress.written["local"], progress.dead["local"]), (3, 1));
    let left: Vec<String> = queues
        .read_all(&names.units)
        .await
        .unwrap()
        .into_iter()
        .map(|stored| stored.message_id)
        .collect();
    assert_eq!(left, std::slice::from_ref(&first.message_id));
    let fields: Vec<String> =
        redis.query(redis::cmd("HKEYS").arg(format!("rsmq:{}:Q", names.units)));
    assert!(
        fields
            .iter()
            .all(|field| !field.starts_with(&second.message_id)),
        "{fields:?}"
    );
}
