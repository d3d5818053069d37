//! Job-wide limits in a real Redis: a request rate and a bound on requests in flight that hold
//! for every process of a job together (here: threads with runtimes and connections of their
//! own, as separate processes would have).

use std::sync::Arc;
use std::time::Duration;

use stevedore::queue::RedisLink;
use stevedore::throttle::{JobConcurrency, JobRate};
use testkit::TestRedis;

/// Runs `work` on `n` threads, each with its own runtime and Redis connection.
fn in_processes<T: Send + 'static>(
    redis: &TestRedis,
    n: usize,
    work: impl Fn(Arc<RedisLink>, usize) -> std::pin::Pin<Box<dyn Future<Output = T>>>
    + Send
    + Sync
    + 'static,
) -> Vec<T> {
    let work = Arc::new(work);
    let threads: Vec<_> = (0..n)
        .map(|index| {
            let (url, work) = (redis.url(), work.clone());
            std::thread::spawn(move || {
                let link = Arc::new(RedisLink::new(&url).unwrap());
                testkit::block_on(work(link, index))
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn throttle_job_rate_holds_across_processes() {
    let redis = TestRedis::start();
    // Four "processes", 15 requests each, at 20 a second for the whole job.
    let grants: Vec<i64> = in_processes(&redis, 4, |link, _| {
        Box::pin(async move {
            let rate = JobRate::new(link, "api", "users", 20.0).unwrap();
            let mut granted = Vec::new();
            for _ in 0..15 {
                granted.push(rate.acquire().await.unwrap());
            }
            granted
        })
    })
    .into_iter()
    .flatten()
    .collect();
    let mut grants = grants;
    grants.sort_unstable();
    assert_eq!(grants.len(), 60);
    // Redis time, in µs: never two grants less than 1/20 s apart, so no second holds more
    // than 20, whichever second one looks at.
    for pair in grants.windows(2) {
        assert!(
            pair[1] - pair[0] >= 50_000,
            "grants {} µs apart",
            pair[1] - pair[0]
        );
    }
    for (index, start) in grants.iter().enumerate() {
        let in_second = grants[index..]
            .iter()
            .take_while(|at| **at < start + 1_000_000)
            .count();
        assert!(in_second <= 20, "{in_second} grants within a second");
    }
}

#[test]
fn throttle_job_rate_hold_off_pushes_every_process_back() {
    let redis = TestRedis::start();
    let link = Arc::new(RedisLink::new(&redis.url()).unwrap());
    let rate = JobRate::new(link.clone(), "api", "users", 1000.0).unwrap();
    let other = JobRate::new(link, "api", "users", 1000.0).unwrap();
    let (before, after) = testkit::block_on(async {
        let before = rate.acquire().await.unwrap();
        // One process is told "Retry-After: 1": the other waits too.
        rate.hold_off(Duration::from_secs(1)).await.unwrap();
        (before, other.acquire().await.unwrap())
    });
    assert!(
        after - before >= 1_000_000,
        "held off {} µs",
        after - before
    );
}

#[test]
fn throttle_job_concurrency_bounds_requests_in_flight_and_leases_run_out() {
    let redis = TestRedis::start();
    let link = Arc::new(RedisLink::new(&redis.url()).unwrap());
    let limit = JobConcurrency::new(link, "api", "users", 2, Duration::from_secs(1));
    testkit::block_on(async {
        assert!(limit.try_acquire("a:1").await.unwrap());
        assert!(limit.try_acquire("b:1").await.unwrap());
        assert!(!limit.try_acquire("c:1").await.unwrap(), "two in flight");
        assert!(
            limit.try_acquire("a:1").await.unwrap(),
            "a holder renews its own"
        );
        limit.release("a:1").await.unwrap();
        assert!(
            limit.try_acquire("c:1").await.unwrap(),
            "a released permit is free"
        );
        // `b:1` and `c:1` die holding their permits: they are free when the leases run out.
        assert!(
            !limit.try_acquire("d:1").await.unwrap(),
            "still two in flight"
        );
        limit.acquire("d:1").await.unwrap();
        let holders: Vec<String> = redis.query(
            redis::cmd("ZRANGE")
                .arg("stevedore:api:limits:users:permits")
                .arg(0)
                .arg(-1),
        );
        assert!(holders.contains(&"d:1".to_string()), "{holders:?}");
        assert!(!holders.contains(&"b:1".to_string()), "{holders:?}");
    });
}
