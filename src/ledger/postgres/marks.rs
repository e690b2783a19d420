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
    // Only while the run is not settled, and with its record share-locked: a run whose
    // session was lost may be settled by another (`settle_run` locks the record first), and
    // then no mark of it may be written, so none of its rows leaves after its marks were
    // read. The count says whether the run was still open.
    let insert = client
        .prepare(
            "WITH open AS (SELECT id FROM runs WHERE id = $1 AND NOT folded FOR SHARE),
             marked AS (
                 INSERT INTO marks (run_id, seq, at_ms)
                 SELECT open.id, s, (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                 FROM open, unnest($2::bigint[]) AS s
                 ON CONFLICT DO NOTHING)
             SELECT count(*) FROM open",
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
                let written = match client.query_one(&insert, &[&run.0, &seqs]) {
                    Ok(row) if row.get::<_, i64>(0) == 1 => Ok(()),
                    Ok(_) => Err(format!(
                        "ledger {location}: run {run} was settled by another run (its \
                         session was lost): no request may leave"
                    )),
                    Err(e) => Err(format!(
                        "ledger {location}: cannot write the leaving mark: {}",
                        super::connect::pg_error(&e)
                    )),
                };
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(written.clone());
                }
            }
        })
        .context("cannot start the ledger's marks thread")?;
    Ok(tx)
}
