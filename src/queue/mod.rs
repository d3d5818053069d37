//! The RSMQ queue of each sink: send units in batches, receive one at a time with
//! dead-lettering after `max_receives`, extend a unit's visibility while it is being written,
//! acknowledge it, and read dead-letter queues. Every call reconnects through [`RedisLink`].

mod link;

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use rsmq_async::{RsmqConnection, RsmqError};

pub use link::{
    Clients, LinkError, Patience, RSMQ_NAMESPACE, RedisLink, is_connection_error, redact_url,
};

/// The two queue names of one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkQueues {
    /// Units waiting to be written.
    pub units: String,
    /// Units and records that could not be written, with reasons.
    pub dead: String,
}

impl SinkQueues {
    /// The queues of sink `sink` in job `job`.
    pub fn new(job: &str, sink: &str) -> SinkQueues {
        SinkQueues {
            units: format!("{job}-{sink}"),
            dead: format!("{job}-{sink}-dlq"),
        }
    }
}

/// The two Redis keys RSMQ keeps `queue` in: the sorted set of message ids (scored by when
/// each becomes visible) and the hash of bodies and receive counts. For scripts that change a
/// queue together with other state in one atomic step.
pub(crate) fn queue_keys(queue: &str) -> (String, String) {
    let key = format!("{RSMQ_NAMESPACE}:{queue}");
    let messages = format!("{key}:Q");
    (key, messages)
}

/// A received unit, hidden from other consumers until acknowledged or its visibility expires.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// RSMQ message id (for extend and ack).
    pub message_id: String,
    /// The encoded unit.
    pub body: Vec<u8>,
    /// How many times it has been received, this time included.
    pub receives: u64,
}

/// What a queue holds, for dashboards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages visible to consumers.
    pub waiting: u64,
    /// Messages received and not yet acknowledged (units being written).
    pub in_flight: u64,
}

/// A message sitting in a queue, read without receiving it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// RSMQ message id.
    pub message_id: String,
    /// The message body.
    pub body: Vec<u8>,
}

/// Queue operations over one reconnecting Redis link.
#[derive(Clone)]
pub struct Queues {
    link: Arc<RedisLink>,
}

impl Queues {
    /// Queue operations over `link`.
    pub fn new(link: Arc<RedisLink>) -> Queues {
        Queues { link }
    }

    /// The link, for operations outside the queue protocol.
    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    /// Creates `name` if it does not exist, with unlimited message size.
    pub async fn ensure(&self, name: &str, visibility: Duration) -> Result<(), LinkError> {
        self.link
            .call(&format!("creating queue {name}"), |mut c| async move {
                match c
                    .rsmq
                    .create_queue(name, Some(visibility), Some(Duration::ZERO), Some(-1))
                    .await
                {
                    Ok(()) | Err(RsmqError::QueueExists) => Ok(()),
                    Err(error) => Err(error),
                }
            })
            .await
    }

    /// Sends `bodies` to `queue` atomically (all or none), visible at once.
    pub async fn send_batch(&self, queue: &str, bodies: &[Vec<u8>]) -> Result<(), LinkError> {
        if bodies.is_empty() {
            return Ok(());
        }
        self.link
            .call(
                &format!("sending {} message(s) to {queue}", bodies.len()),
                |mut c| async move {
                    c.rsmq
                        .send_message_batch(queue, bodies.to_vec(), Some(Duration::ZERO))
                        .await
                        .map(drop)
                },
            )
            .await
    }

    /// Receives up to `count` visible units of `queue` in one call, hiding them for
    /// `visibility`. Each delivery carries RSMQ's receive count; what to do with units that
    /// keep failing is the caller's policy.
    pub async fn receive_batch(
        &self,
        queue: &str,
        visibility: Duration,
        count: u32,
    ) -> Result<Vec<Delivery>, LinkError> {
        let messages = self
            .link
            .call(&format!("receiving from {queue}"), |mut c| async move {
                c.rsmq
                    .receive_message_batch::<Vec<u8>>(queue, Some(visibility), count)
                    .await
            })
            .await?;
        Ok(messages
            .into_iter()
            .map(|m| Delivery {
                message_id: m.id,
                body: m.message,
                receives: m.rc,
            })
            .collect())
    }

    /// Keeps a received unit hidden for another `visibility` from now.
    pub async fn extend(
        &self,
        queue: &str,
        message_id: &str,
        visibility: Duration,
    ) -> Result<(), LinkError> {
        self.link
            .call(
                &format!("extending visibility in {queue}"),
                |mut c| async move {
                    c.rsmq
                        .change_message_visibility(queue, message_id, visibility)
                        .await
                },
            )
            .await
    }

    /// Deletes a unit that has been written.
    pub async fn ack(&self, queue: &str, message_id: &str) -> Result<(), LinkError> {
        self.link
            .call(&format!("acknowledging in {queue}"), |mut c| async move {
                c.rsmq.delete_message(queue, message_id).await.map(drop)
            })
            .await
    }

    /// Moves one message from `from` to `to` atomically (keeping its receive count).
    pub async fn move_message(
        &self,
        from: &str,
        message_id: &str,
        to: &str,
    ) -> Result<(), LinkError> {
        self.link
            .call(
                &format!("moving a message from {from} to {to}"),
                |mut c| async move { c.rsmq.move_message(from, message_id, to).await.map(drop) },
            )
            .await
    }

    /// Replaces the body of message `message_id` in `from` by `body`, then moves it to `to`
    /// atomically. Used to dead-letter a unit with its reason: should the process die between
    /// the two steps, the unit is redelivered with the new body (which still decodes) and
    /// dead-lettered again, never lost and never listed twice.
    pub async fn move_message_with_body(
        &self,
        from: &str,
        message_id: &str,
        to: &str,
        body: &[u8],
    ) -> Result<(), LinkError> {
        // Only a message still there is rewritten: HSET alone would leave an orphan field.
        let replace = redis::Script::new(
            "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then \
             redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1 end return 0",
        );
        let key = format!("{RSMQ_NAMESPACE}:{from}:Q");
        self.link
            .call(&format!("rewriting a message in {from}"), |mut c| {
                let mut invocation = replace.key(&key);
                invocation.arg(message_id).arg(body);
                async move {
                    invocation
                        .invoke_async::<i64>(&mut c.redis)
                        .await
                        .map_err(Into::into)
                }
            })
            .await?;
        self.move_message(from, message_id, to).await
    }

    /// Messages in `queue`, hidden ones (being written right now) included.
    pub async fn depth(&self, queue: &str) -> Result<u64, LinkError> {
        self.link
            .call(
                &format!("reading the depth of {queue}"),
                |mut c| async move { c.rsmq.get_queue_attributes(queue).await },
            )
            .await
            .map(|attributes| attributes.msgs)
    }

    /// How many messages of `queue` wait and how many are hidden (received, being written);
    /// zero for a queue that does not exist yet. Reads RSMQ's sorted set directly (scores are
    /// the times messages become visible), so it never fails on a missing queue.
    pub async fn counts(&self, queue: &str) -> Result<QueueCounts, LinkError> {
        let key = format!("{RSMQ_NAMESPACE}:{queue}");
        self.link
            .call(&format!("reading the counts of {queue}"), |mut c| {
                let key = key.clone();
                async move {
                    let (seconds, micros): (u64, u64) =
                        redis::cmd("TIME").query_async(&mut c.redis).await?;
                    let now_ms = seconds * 1000 + micros / 1000;
                    let (all, hidden): (u64, u64) = redis::pipe()
                        .zcard(&key)
                        .zcount(&key, format!("({now_ms}"), "+inf")
                        .query_async(&mut c.redis)
                        .await?;
                    Ok(QueueCounts {
                        waiting: all.saturating_sub(hidden),
                        in_flight: hidden,
                    })
                }
            })
            .await
    }

    /// Every message in `queue`, oldest first, without receiving any (for dead-letter reports).
    pub async fn read_all(&self, queue: &str) -> Result<Vec<Stored>, LinkError> {
        let key = format!("{RSMQ_NAMESPACE}:{queue}");
        self.link
            .call(&format!("reading {queue}"), |mut c| {
                let key = key.clone();
                async move {
                    let ids: Vec<String> = c.redis.zrange(&key, 0, -1).await?;
                    if ids.is_empty() {
                        return Ok(Vec::new());
                    }
                    let bodies: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                        .arg(format!("{key}:Q"))
                        .arg(&ids)
                        .query_async(&mut c.redis)
                        .await?;
                    Ok(ids
                        .into_iter()
                        .zip(bodies)
                        .filter_map(|(message_id, body)| {
                            body.map(|body| Stored { message_id, body })
                        })
                        .collect())
                }
            })
            .await
    }
}
