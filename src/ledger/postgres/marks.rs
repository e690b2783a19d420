//! Leaving marks on a connection of their own: the marks of all the requests about to leave
//! go in one commit that does not wait for the server's disk, and each request leaves once
//! its mark is on the server. Intents and outcomes, on the writer's connection, never make
//! a mark wait.

use anyhow::{Context, Result};
use postgres::Client;
use tokio::sync::{mpsc, oneshot};

use crate::domain::RunId;

/// A row number and where to say that its mark is written.
pub type Mark = (u64, oneshot::Sender<Result<(), String>>);

/// Marks queued at most before the senders wait: twice any sane concurrency.
const MAX_QUEUED: usize = 4096;

pub fn spawn(mut client: Client, run: RunId, location: String) -> Result<mpsc::Sender<Mark>> {
    client
        .batch_execute("SET search_path = invoice_dispatch; SET synchronous_commit = off")
        .context("cannot prepare the ledger's marks connection")?;
    // Prepared once: a statement given as text is prepared again on every call, which is a
    // second round trip on each request's path.
    let insert = client
        .prepare(
            "INSERT INTO marks (run_id, seq, at_ms)
             SELECT $1, s, (extract(epoch FROM clock_timestamp()) * 1000)::bigint
             FROM unnest($2::bigint[]) AS s
             ON CONFLICT DO NOTHING",
        )
        .context("cannot prepare the ledger's marks connection")?;
    let (tx, mut rx) = mpsc::channel::<Mark>(MAX_QUEUED);
    std::thread::Builder::new()
        .name("ledger-marks".into())
        .spawn(move || {
            let mut batch = Vec::new();
            while let Some(first) = rx.blocking_recv() {
                batch.push(first);
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let seqs: Vec<i64> = batch.iter().map(|(seq, _)| *seq as i64).collect();
                let written = client
                    .execute(&insert, &[&run.0, &seqs])
                    .map(drop)
                    .map_err(|e| {
                        let why = super::connect::pg_error(&e);
                        format!("ledger {location}: cannot write the leaving mark: {why}")
                    });
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(written.clone());
                }
            }
        })
        .context("cannot start the ledger's marks thread")?;
    Ok(tx)
}
