//! Leaving marks and answers, each on a connection of its own. The marks of all the
//! requests about to leave go in one commit that does not wait for the server's disk, and
//! each request leaves once its mark is on the server. A row's answer goes the same way,
//! and its send slot is released only once the answer is on the server: after a kill,
//! the rows with a mark and no answer are at most the requests that held a slot. The
//! writer's connection (intents, whose commits wait for the disk) never makes either wait.

use anyhow::{Context, Result};
use postgres::{Client, Statement};
use tokio::sync::{mpsc, oneshot};

use crate::domain::{AttemptNote, Outcome, RunId};

/// What to write, and where to say that it is written.
pub type Note<T> = (T, oneshot::Sender<Result<(), String>>);
/// A row number whose request is about to leave.
pub type Mark = Note<u64>;
/// A row number and what came of its request.
pub type Answer = Note<(u64, Box<Outcome>)>;

/// Notes queued at most before the senders wait: twice any sane concurrency.
const MAX_QUEUED: usize = 4096;

/// Every statement below writes only while the run is not settled, with its record
/// share-locked: a run whose session was lost may be settled by another (`settle_run`
/// locks the record first), and then nothing more of it may be written, so no row leaves,
/// and no answer lands, after its marks were read. The count says whether the run was open.
const OPEN: &str = "open AS (SELECT id FROM runs WHERE id = $1 AND NOT folded FOR SHARE)";

pub fn marks(client: Client, run: RunId, location: String) -> Result<mpsc::Sender<Mark>> {
    spawn(
        client,
        run,
        location,
        "marks",
        |client| {
            client.prepare(&format!(
                "WITH {OPEN},
             marked AS (
                 INSERT INTO marks (run_id, seq, at_ms)
                 SELECT open.id, s, (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                 FROM open, unnest($2::bigint[]) AS s
                 ON CONFLICT DO NOTHING)
             SELECT count(*) FROM open"
            ))
        },
        |client, insert, run, seqs: &[u64]| {
            let seqs: Vec<i64> = seqs.iter().map(|s| *s as i64).collect();
            client.query_one(insert, &[&run.0, &seqs])
        },
    )
}

pub fn answers(client: Client, run: RunId, location: String) -> Result<mpsc::Sender<Answer>> {
    spawn(
        client,
        run,
        location,
        "answers",
        prepare_answers,
        write_answers,
    )
}

fn prepare_answers(client: &mut Client) -> Result<Statement, postgres::Error> {
    client.prepare(&format!(
        "WITH {OPEN},
         answered AS (
             INSERT INTO outcomes (run_id, seq, status, skip, http_status, attempts,
                 payment_link, invoice_link, text_sent, email_sent, errors, warnings, message,
                 at_ms)
             SELECT open.id, u.* FROM open, unnest($2::bigint[], $3::text[], $4::text[],
                 $5::int[], $6::int[], $7::text[], $8::text[], $9::text[], $10::text[],
                 $11::text[], $12::text[], $13::text[], $14::bigint[]) AS u),
         attempted AS (
             INSERT INTO attempts (run_id, seq, n, at_ms, http_status, what, errors, warnings)
             SELECT open.id, a.* FROM open, unnest($15::bigint[], $16::int[], $17::bigint[],
                 $18::int[], $19::text[], $20::text[], $21::text[]) AS a)
         SELECT count(*) FROM open"
    ))
}

/// Outcomes, and the attempts before each row's last, in one statement over arrays.
fn write_answers(
    client: &mut Client,
    insert: &Statement,
    run: RunId,
    answers: &[(u64, Box<Outcome>)],
) -> Result<postgres::Row, postgres::Error> {
    let col = |f: &dyn Fn(&Outcome) -> Option<String>| {
        answers.iter().map(|(_, o)| f(o)).collect::<Vec<_>>()
    };
    let seq: Vec<i64> = answers.iter().map(|(s, _)| *s as i64).collect();
    let status = col(&|o| Some(o.status.as_str().to_string()));
    let skip = col(&|o| o.skip.map(|s| s.code().to_string()));
    let http: Vec<Option<i32>> = answers
        .iter()
        .map(|(_, o)| o.http_status.map(i32::from))
        .collect();
    let attempts: Vec<i32> = answers.iter().map(|(_, o)| o.attempts as i32).collect();
    let (payment, invoice) = (
        col(&|o| o.payment_link.clone()),
        col(&|o| o.invoice_link.clone()),
    );
    let (text, email) = (
        col(&|o| o.text_sent.clone()),
        col(&|o| o.email_sent.clone()),
    );
    let (errors, warnings) = (
        col(&|o| Some(o.errors.clone())),
        col(&|o| Some(o.warnings.clone())),
    );
    let message = col(&|o| Some(o.message.clone()));
    let at: Vec<i64> = answers
        .iter()
        .map(|(_, o)| o.completed_at.timestamp_millis())
        .collect();
    let notes = Notes::of(answers);
    client.query_one(
        insert,
        &[
            &run.0,
            &seq,
            &status,
            &skip,
            &http,
            &attempts,
            &payment,
            &invoice,
            &text,
            &email,
            &errors,
            &warnings,
            &message,
            &at,
            &notes.seq,
            &notes.n,
            &notes.at,
            &notes.http,
            &notes.what,
            &notes.errors,
            &notes.warnings,
        ],
    )
}

/// The attempts before each row's last, as columns.
#[derive(Default)]
struct Notes<'a> {
    seq: Vec<i64>,
    n: Vec<i32>,
    at: Vec<i64>,
    http: Vec<Option<i32>>,
    what: Vec<&'a str>,
    errors: Vec<&'a str>,
    warnings: Vec<&'a str>,
}

impl<'a> Notes<'a> {
    fn of(answers: &'a [(u64, Box<Outcome>)]) -> Notes<'a> {
        let mut notes = Notes::default();
        for (seq, outcome) in answers {
            for (n, note) in outcome.earlier.iter().enumerate() {
                notes.push(*seq, n, note);
            }
        }
        notes
    }

    fn push(&mut self, seq: u64, n: usize, note: &'a AttemptNote) {
        self.seq.push(seq as i64);
        self.n.push(n as i32 + 1);
        self.at.push(note.at.timestamp_millis());
        self.http.push(note.http_status.map(i32::from));
        self.what.push(&note.what);
        self.errors.push(&note.errors);
        self.warnings.push(&note.warnings);
    }
}

/// A thread that writes what queued up together, in one statement prepared once (a
/// statement given as text is prepared again on every call: a second round trip).
fn spawn<T: Send + 'static>(
    mut client: Client,
    run: RunId,
    location: String,
    what: &'static str,
    prepare: impl FnOnce(&mut Client) -> Result<Statement, postgres::Error>,
    write: impl Fn(&mut Client, &Statement, RunId, &[T]) -> Result<postgres::Row, postgres::Error>
        + Send
        + 'static,
) -> Result<mpsc::Sender<Note<T>>> {
    let cannot = || format!("cannot prepare the ledger's {what} connection");
    client
        .batch_execute("SET search_path = invoice_dispatch; SET synchronous_commit = off")
        .with_context(cannot)?;
    let insert = prepare(&mut client).with_context(cannot)?;
    let (tx, mut rx) = mpsc::channel::<Note<T>>(MAX_QUEUED);
    std::thread::Builder::new()
        .name(format!("ledger-{what}"))
        .spawn(move || {
            let (mut items, mut replies) = (Vec::new(), Vec::new());
            while let Some((first, reply)) = rx.blocking_recv() {
                items.push(first);
                replies.push(reply);
                while let Ok((more, reply)) = rx.try_recv() {
                    items.push(more);
                    replies.push(reply);
                }
                let written = match write(&mut client, &insert, run, &items) {
                    Ok(row) if row.get::<_, i64>(0) == 1 => Ok(()),
                    Ok(_) => Err(format!(
                        "ledger {location}: run {run} was settled by another run (its \
                         session was lost): nothing more of it may be written"
                    )),
                    Err(e) => Err(format!(
                        "ledger {location}: cannot write the {what}: {}",
                        super::connect::pg_error(&e)
                    )),
                };
                items.clear();
                for reply in replies.drain(..) {
                    let _ = reply.send(written.clone());
                }
            }
        })
        .with_context(|| format!("cannot start the ledger's {what} thread"))?;
    Ok(tx)
}
