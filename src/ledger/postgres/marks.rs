//! Leaving marks and answers, on a connection of their own. The marks of all the requests
//! about to leave, and the answers of those that came back, go in one statement and one
//! commit that does not wait for the server's disk; each request leaves once its mark is
//! on the server, and gives up its send slot once its answer is. So after a kill the rows
//! with a mark and no answer are at most the requests that held a slot. The writer's
//! connection (intents, whose commits wait for the disk) never makes either wait.

use anyhow::{Context, Result};
use postgres::{Client, Statement};
use tokio::sync::{mpsc, oneshot};

use crate::domain::{AttemptNote, Outcome, RunId};

/// A leaving mark, or an answer.
pub enum Note {
    /// A row number whose request is about to leave.
    Leaving(u64),
    /// A row number and what came of its request.
    Answered(u64, Box<Outcome>),
}

/// A note (a mark or an answer) and where to say that it is written.
pub type Mark = (Note, oneshot::Sender<Result<(), String>>);

/// Notes queued at most before the senders wait: twice any sane concurrency.
const MAX_QUEUED: usize = 4096;

/// Written only while the run is not settled, with its record share-locked: a run whose
/// session was lost may be settled by another (`settle_run` locks the record first), and
/// then nothing more of it may be written, so no row leaves, and no answer lands, after
/// its marks were read. The count says whether the run was open.
const WRITE: &str = "WITH open AS (SELECT id FROM runs WHERE id = $1 AND NOT folded FOR SHARE),
     marked AS (
         INSERT INTO marks (run_id, seq, at_ms)
         SELECT open.id, s, (extract(epoch FROM clock_timestamp()) * 1000)::bigint
         FROM open, unnest($22::bigint[]) AS s
         ON CONFLICT DO NOTHING),
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
     SELECT count(*) FROM open";

/// Marks, outcomes, and the attempts before each row's last, in one statement over arrays.
fn write(
    client: &mut Client,
    insert: &Statement,
    run: RunId,
    marks: &[i64],
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
            &marks,
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

/// Starts the thread that writes what queued up together, in one statement prepared once
/// (a statement given as text is prepared again on every call: a second round trip).
pub fn spawn(mut client: Client, run: RunId, location: String) -> Result<mpsc::Sender<Mark>> {
    let cannot = "cannot prepare the ledger's marks connection";
    client
        .batch_execute("SET search_path = invoice_dispatch; SET synchronous_commit = off")
        .context(cannot)?;
    let insert = client.prepare(WRITE).context(cannot)?;
    let (tx, mut rx) = mpsc::channel::<Mark>(MAX_QUEUED);
    std::thread::Builder::new()
        .name("ledger-marks".into())
        .spawn(move || {
            let (mut marks, mut answers, mut replies) = (Vec::new(), Vec::new(), Vec::new());
            while let Some(first) = rx.blocking_recv() {
                let mut next = Some(first);
                while let Some((note, reply)) = next.take().or_else(|| rx.try_recv().ok()) {
                    match note {
                        Note::Leaving(seq) => marks.push(seq as i64),
                        Note::Answered(seq, outcome) => answers.push((seq, outcome)),
                    }
                    replies.push(reply);
                }
                let written = match write(&mut client, &insert, run, &marks, &answers) {
                    Ok(row) if row.get::<_, i64>(0) == 1 => Ok(()),
                    Ok(_) => Err(format!(
                        "ledger {location}: run {run} was settled by another run (its \
                         session was lost): nothing more of it may be sent"
                    )),
                    Err(e) => Err(format!(
                        "ledger {location}: cannot write the leaving marks and answers: {}",
                        super::connect::pg_error(&e)
                    )),
                };
                marks.clear();
                answers.clear();
                for reply in replies.drain(..) {
                    let _ = reply.send(written.clone());
                }
            }
        })
        .context("cannot start the ledger's marks thread")?;
    Ok(tx)
}
