//! The dispatcher's loop against scripted answers: no HTTP, no ledger, paused time.

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant as TokioInstant;

use super::*;
use crate::client::{Answer, ApiMessage};
use crate::domain::SkipKind;
use crate::input::{DepartmentUuid, Flags};

/// Answers by invoice, in order; a row with nothing scripted succeeds.
#[derive(Default)]
struct Script {
    sends: Mutex<HashMap<String, VecDeque<Attempt>>>,
    checks: Mutex<HashMap<String, VecDeque<Attempt>>>,
    /// (invoice, what, when) of every call, in call order.
    calls: Mutex<Vec<(String, &'static str, TokioInstant)>>,
}

impl Script {
    fn send(self, invoice: &str, answers: Vec<Attempt>) -> Self {
        self.sends
            .lock()
            .unwrap()
            .insert(invoice.into(), answers.into());
        self
    }
    fn check(self, invoice: &str, answers: Vec<Attempt>) -> Self {
        self.checks
            .lock()
            .unwrap()
            .insert(invoice.into(), answers.into());
        self
    }
    fn calls(&self, what: &str) -> Vec<String> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|c| c.1 == what)
            .map(|c| c.0.clone())
            .collect()
    }
    fn next(
        &self,
        map: &Mutex<HashMap<String, VecDeque<Attempt>>>,
        invoice: &str,
        what: &'static str,
    ) -> Option<Attempt> {
        self.calls
            .lock()
            .unwrap()
            .push((invoice.into(), what, TokioInstant::now()));
        map.lock()
            .unwrap()
            .get_mut(invoice)
            .and_then(VecDeque::pop_front)
    }
}

impl Api for Arc<Script> {
    fn send(&self, req: &Request) -> impl Future<Output = Attempt> + Send {
        let answer = self.next(&self.sends, req.invoice.as_str(), "send");
        async move { answer.unwrap_or_else(ok) }
    }
    fn paid_status(&self, invoice: &InvoiceGuid) -> impl Future<Output = Attempt> + Send {
        let answer = self.next(&self.checks, invoice.as_str(), "check");
        async move { answer.unwrap_or_else(|| answer_with(200, |a| a.paid = Some(false))) }
    }
}

/// Outcomes by row, and whether leaving marks may be written.
#[derive(Default)]
struct Book {
    outcomes: Mutex<HashMap<u64, Outcome>>,
    marks: Mutex<Vec<u64>>,
    marks_fail: bool,
}

impl Journal for Arc<Book> {
    fn leaving(&self, seq: u64) -> impl Future<Output = anyhow::Result<()>> + Send {
        let result = if self.marks_fail {
            Err(anyhow::anyhow!("disk full"))
        } else {
            self.marks.lock().unwrap().push(seq);
            Ok(())
        };
        async move { result }
    }
    fn record(
        &self,
        seq: u64,
        outcome: Outcome,
    ) -> impl Future<Output = Result<(), (anyhow::Error, Outcome)>> + Send {
        self.outcomes.lock().unwrap().insert(seq, outcome);
        async { Ok(()) }
    }
}

fn answer_with(status: u16, f: impl FnOnce(&mut Answer)) -> Attempt {
    let mut a = Answer {
        status,
        ..Answer::default()
    };
    f(&mut a);
    Attempt::Answered(a)
}

fn ok() -> Attempt {
    answer_with(200, |a| {
        a.payment_link = Some("https://pay/x".into());
        a.text_sent = Some("SUCCESS".into());
        a.email_sent = Some("SUCCESS".into());
    })
}

fn settings() -> Settings {
    Settings {
        rate: 0,
        auto: None,
        burst: 1,
        concurrency: 4,
        max_attempts: 5,
        backoff: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            retry_after_max: Duration::from_secs(60),
        },
        retry_ambiguous: false,
        max_failure_ratio: 1.0,
        min_attempts_for_ratio: 1000,
        shutdown_grace: Duration::from_secs(10),
        skip_paid: false,
    }
}

/// Runs `rows` ("DEPT/INVOICE") through a dispatcher; outcomes by row and the stop reason.
async fn run(
    rows: &[&str],
    script: Script,
    book: Book,
    settings: Settings,
) -> (Vec<Option<Outcome>>, Arc<Script>, Option<StopReason>) {
    let script = Arc::new(script);
    let book = Arc::new(book);
    let shared = Shared::default();
    let stopper = shared.stopper.clone();
    let dispatcher = Dispatcher::new(script.clone(), book.clone(), settings, shared);
    let (tx, rx) = mpsc::channel(rows.len().max(1));
    for (seq, row) in rows.iter().enumerate() {
        let (dept, invoice) = row.split_once('/').unwrap();
        let request = Request {
            department: DepartmentUuid::parse(dept).unwrap(),
            invoice: InvoiceGuid::parse(invoice).unwrap(),
            flags: Flags::default(),
        };
        let seq = seq as u64;
        tx.send(Admitted {
            seq,
            line: seq + 2,
            request,
            note: None,
        })
        .await
        .unwrap();
    }
    drop(tx);
    dispatcher.run(rx).await;
    let mut outcomes = book.outcomes.lock().unwrap().clone();
    let outcomes = (0..rows.len() as u64)
        .map(|s| outcomes.remove(&s))
        .collect();
    (outcomes, script, stopper.reason().cloned())
}

fn status(o: &Option<Outcome>) -> Option<Status> {
    o.as_ref().map(|o| o.status)
}

#[tokio::test(start_paused = true)]
async fn retry_safe_answers_are_retried_and_each_attempt_is_kept() {
    let script = Script::default().send(
        "flaky",
        vec![
            answer_with(503, |_| {}),
            Attempt::NotConnected("could not connect: refused".into()),
        ],
    );
    let (out, script, stop) = run(&["d/flaky"], script, Book::default(), settings()).await;
    let o = out[0].as_ref().unwrap();
    assert_eq!((o.status, o.attempts), (Status::Sent, 3));
    assert_eq!(o.earlier.len(), 2);
    assert_eq!(o.earlier[0].http_status, Some(503));
    assert!(
        o.earlier[1].what.starts_with("could not connect"),
        "{:?}",
        o.earlier
    );
    assert_eq!(script.calls("send").len(), 3);
    assert_eq!(stop, None);
}

#[tokio::test(start_paused = true)]
async fn an_ambiguous_answer_ends_unknown_and_is_retried_only_when_allowed() {
    let script = || {
        Script::default().send(
            "x",
            vec![answer_with(500, |_| {}), answer_with(400, |_| {})],
        )
    };
    let (out, script_used, _) = run(&["d/x"], script(), Book::default(), settings()).await;
    let o = out[0].as_ref().unwrap();
    assert_eq!((o.status, o.attempts), (Status::Unknown, 1));
    assert_eq!(script_used.calls("send").len(), 1);

    let retrying = Settings {
        retry_ambiguous: true,
        ..settings()
    };
    let (out, _, _) = run(&["d/x"], script(), Book::default(), retrying).await;
    let o = out[0].as_ref().unwrap();
    // The 400 alone would be `failed` (sent again by a rerun); the 500 before it may have
    // reached the customer.
    assert_eq!((o.status, o.attempts), (Status::Unknown, 2));
    assert!(
        o.message.contains("(HTTP 500) may have been delivered"),
        "{}",
        o.message
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_pauses_every_row_not_just_its_own() {
    let throttled = answer_with(429, |a| a.retry_after = Some(Duration::from_secs(2)));
    let script = Script::default().send("a", vec![throttled]);
    let rows = ["d/a", "d/b", "d/c", "d/e"];
    let s = Settings {
        concurrency: 2,
        ..settings()
    };
    let (out, script, _) = run(&rows, script, Book::default(), s).await;
    assert!(
        out.iter().all(|o| status(o) == Some(Status::Sent)),
        "{out:?}"
    );
    let calls = script.calls.lock().unwrap().clone();
    let at_429 = calls.iter().position(|c| c.0 == "a").unwrap();
    let t429 = calls[at_429].2;
    let after: Vec<Duration> = calls[at_429 + 1..].iter().map(|c| c.2 - t429).collect();
    // Requests already on their way at the 429 go at the same instant; nothing else may
    // leave before Retry-After has passed.
    assert!(
        after
            .iter()
            .all(|d| d.is_zero() || *d >= Duration::from_secs(2)),
        "{after:?}"
    );
    assert!(
        after
            .iter()
            .filter(|d| **d >= Duration::from_secs(2))
            .count()
            >= 2,
        "{after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_department_refused_by_its_probe_costs_one_request() {
    let refused = answer_with(403, |a| {
        a.errors.push(ApiMessage {
            code: Some(100013),
            title: "INVALID_DEPARTMENT_TOKEN".into(),
            message: "Denied".into(),
        })
    });
    let script = Script::default().send("a", vec![refused]);
    let rows = ["d1/a", "d1/b", "d1/c", "d2/x"];
    let (out, script, stop) = run(&rows, script, Book::default(), settings()).await;
    let statuses: Vec<_> = out.iter().map(status).collect();
    assert_eq!(
        statuses,
        [
            Some(Status::Failed),
            Some(Status::Failed),
            Some(Status::Failed),
            Some(Status::Sent)
        ]
    );
    assert_eq!(script.calls("send"), ["a", "x"]);
    let b = out[1].as_ref().unwrap();
    assert!(b.message.starts_with("not sent: HTTP 403"), "{}", b.message);
    assert_eq!(b.attempts, 0);
    assert_eq!(stop, None);
}

#[tokio::test(start_paused = true)]
async fn a_401_stops_the_run_and_leaves_the_other_rows_unstarted() {
    let script = Script::default().send("a", vec![answer_with(401, |_| {})]);
    let rows = ["d/a", "d/b", "d/c", "d/e", "d/f"];
    let s = Settings {
        concurrency: 1,
        ..settings()
    };
    let (out, script, stop) = run(&rows, script, Book::default(), s).await;
    assert_eq!(status(&out[0]), Some(Status::Failed));
    assert!(out[1..].iter().all(Option::is_none), "{out:?}");
    assert_eq!(script.calls("send"), ["a"]);
    assert!(matches!(stop, Some(StopReason::Credentials(_))), "{stop:?}");
}

#[tokio::test(start_paused = true)]
async fn a_paid_invoice_is_skipped_without_a_payment_request() {
    let paid = answer_with(200, |a| {
        a.paid = Some(true);
        a.amount = Some("42.5".into());
    });
    let flaky_check = vec![
        answer_with(503, |_| {}),
        answer_with(200, |a| a.paid = Some(false)),
    ];
    let script = Script::default()
        .check("paid-1", vec![paid])
        .check("ok-2", flaky_check);
    let s = Settings {
        skip_paid: true,
        ..settings()
    };
    let (out, script, stop) = run(&["d/paid-1", "d/ok-2"], script, Book::default(), s).await;
    let paid = out[0].as_ref().unwrap();
    assert_eq!(
        (paid.status, paid.skip),
        (Status::Skipped, Some(SkipKind::AlreadyPaid))
    );
    assert_eq!(paid.message, "already paid (amount 42.5)");
    assert_eq!(paid.attempts, 0);
    assert_eq!(status(&out[1]), Some(Status::Sent));
    assert_eq!(script.calls("send"), ["ok-2"]);
    assert_eq!(script.calls("check"), ["paid-1", "ok-2", "ok-2"]);
    assert_eq!(stop, None);
}

#[tokio::test(start_paused = true)]
async fn a_check_without_its_scope_stops_the_run_before_any_payment_request() {
    let script = Script::default().check("a", vec![answer_with(403, |_| {})]);
    let s = Settings {
        skip_paid: true,
        ..settings()
    };
    let rows = ["d/a", "e/b", "f/c", "g/d"];
    let (out, script, stop) = run(&rows, script, Book::default(), s).await;
    assert!(script.calls("send").is_empty());
    assert_eq!(script.calls("check"), ["a"]);
    match stop {
        Some(StopReason::Credentials(why)) => {
            assert!(why.contains("payment.invoice.check.paid"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // The probe's own row has an outcome; rows the pool had taken end not_sent too, and
    // rows it never took are the caller's to report (no outcome here).
    assert_eq!(status(&out[0]), Some(Status::NotSent), "{out:?}");
    for o in out.iter().flatten() {
        assert_eq!(o.status, Status::NotSent, "{o:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_check_that_never_succeeds_fails_the_row_and_sends_nothing_blind() {
    let script = Script::default().check(
        "x",
        (0..9).map(|_| Attempt::Lost("timeout".into())).collect(),
    );
    let s = Settings {
        skip_paid: true,
        max_attempts: 3,
        ..settings()
    };
    let (out, script, _) = run(&["d/x"], script, Book::default(), s).await;
    let o = out[0].as_ref().unwrap();
    assert_eq!(o.status, Status::Failed);
    assert!(
        o.message.contains("gave up after 3 attempts"),
        "{}",
        o.message
    );
    assert!(script.calls("send").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_leaving_mark_that_cannot_be_written_keeps_the_request_home() {
    let book = Book {
        marks_fail: true,
        ..Book::default()
    };
    let (out, script, stop) = run(&["d/a"], Script::default(), book, settings()).await;
    assert_eq!(status(&out[0]), Some(Status::NotSent));
    assert!(script.calls("send").is_empty());
    assert!(matches!(stop, Some(StopReason::Ledger(_))), "{stop:?}");
}
