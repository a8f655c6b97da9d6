//! Issue 18: traces from a real `tally serve` reach a real OTLP receiver (the collector's TraceService,
//! served in the test): a call's incoming `traceparent` is continued by the server span, the wallet
//! actor's span is its child, the group commit that made its events durable and the read models'
//! apply are joined to it (child and links), the events record the server span's context; a caller's
//! unsampled trace stays unsampled; a call without one starts its own trace; the timers' `RunDue`
//! traces its command; sampling off sends nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tally_proto::v1::{AuthorizeRedemptionRequest, EarnRequest, EnrollRequest, GetWalletRequest};
use tally_tests::{TallyServer, TestDatabase};

/// What the receiver got: each span with its service name.
#[derive(Debug, Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.clone())
                .map(|v| match v {
                    Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Received {
    /// Serves the collector's trace service on a free loopback port; its URL.
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{address}")
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (at most 10 s) until a span satisfies `found`.
    async fn until(&self, what: &str, found: impl Fn(&Span) -> bool) -> Span {
        let started = Instant::now();
        loop {
            if let Some((_, span)) = self.spans().into_iter().find(|(_, s)| found(s)) {
                return span;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no {what} within 10 s; received {:#?}", self.spans());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether `span` is `ancestor` or below it, by parent links among `spans`.
fn descends(spans: &[(String, Span)], span: &Span, ancestor: &Span) -> bool {
    let mut current = span.clone();
    for _ in 0..16 {
        if current.span_id == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|(_, s)| s.span_id == current.parent_span_id) {
            Some((_, parent)) => current = parent.clone(),
            None => return false,
        }
    }
    false
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(span: &Span) -> BTreeMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|a| {
            let value = match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                other => format!("{other:?}"),
            };
            Some((a.key.clone(), value))
        })
        .collect()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_trace_is_continued_through_the_actor_and_the_store_into_its_events() {
    let receiver = Received::default();
    let endpoint = receiver.serve().await;
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("--store={}", database.postgres_url);
    // RUST_LOG as a server runs by default: libraries' spans (ractor's, at INFO) are live then.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "tally-under-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "info"),
    ];
    let args = [&store, "--reporting-db", &database.postgres_url, "--local-read-model=true", "--tenant", "acme"];
    let server = TallyServer::start_with_env(dir.path(), &args, &env);
    let mut client = server.client().await;
    let enroll = EnrollRequest { tenant_id: "acme".into(), wallet_id: "t-1".into(), idempotency_key: "e".into(), ..Default::default() };
    client.enroll(enroll).await.unwrap();

    let mut earn = tonic::Request::new(EarnRequest {
        tenant_id: "acme".into(),
        wallet_id: "t-1".into(),
        idempotency_key: "k-1".into(),
        source_ref: "o-1".into(),
        points: 10,
        ..Default::default()
    });
    earn.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap());
    client.earn(earn).await.unwrap();

    let in_trace = |s: &Span| hex(&s.trace_id) == TRACE_ID;
    let server_span = receiver.until("server span of Earn", |s| in_trace(s) && s.name == "tally.v1.WalletService/Earn").await;
    assert_eq!(hex(&server_span.parent_span_id), PARENT_ID, "the caller's span is the parent");
    assert_eq!(server_span.kind, SpanKind::Server as i32);
    let rpc = attributes(&server_span);
    assert_eq!(rpc.get("rpc.system").map(String::as_str), Some("grpc"), "{rpc:?}");
    assert_eq!(rpc.get("rpc.service").map(String::as_str), Some("tally.v1.WalletService"));
    assert_eq!(rpc.get("rpc.method").map(String::as_str), Some("Earn"));
    assert_eq!(rpc.get("rpc.grpc.status_code").map(String::as_str), Some("0"));
    let command = receiver.until("the wallet actor's span", |s| in_trace(s) && s.name == "wallet.command").await;
    assert!(descends(&receiver.spans(), &command, &server_span), "the actor's span is in the call's");
    assert!(attributes(&command).contains_key("queued_us"), "time queued in the mailbox: {:?}", attributes(&command));
    // The group commit that made it durable: the (first traced) command's child, linked to every command.
    let commit = receiver.until("the group commit's span", |s| in_trace(s) && s.name == "store.commit").await;
    assert_eq!(commit.parent_span_id, command.span_id, "the commit is the command's child");
    assert!(commit.links.iter().any(|l| l.span_id == command.span_id), "linked to the commands it carried: {:?}", commit.links);
    let commit_attributes = attributes(&commit);
    assert!(["appends", "events", "write_us"].iter().all(|k| commit_attributes.contains_key(*k)), "{commit_attributes:?}");
    // Each read model's apply of the call's event is linked to the call (the context in the event).
    let linked = |s: &Span| s.name == "projection.apply" && s.links.iter().any(|l| l.span_id == server_span.span_id);
    let applied = receiver.until("a read model's apply of the call's event", linked).await;
    assert!(applied.links.iter().any(|l| l.span_id == applied.parent_span_id), "a child of a call it applies: {applied:?}");
    assert_eq!(applied.kind, SpanKind::Consumer as i32);
    assert!(receiver.spans().iter().all(|(service, _)| service == "tally-under-test"), "OTEL_SERVICE_NAME names the service");

    // The event records the server span's context: a projection or an auditor finds the call's trace.
    let (pg, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = pg.query_one("SELECT traceparent FROM tally_events WHERE idempotency_key = 'k-1'", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), format!("00-{TRACE_ID}-{}-01", hex(&server_span.span_id)));

    // A `tracestate` over 512 bytes (three valid members of 200) is not kept in the log.
    let mut oversized = tonic::Request::new(EarnRequest {
        tenant_id: "acme".into(),
        wallet_id: "t-1".into(),
        idempotency_key: "k-2".into(),
        source_ref: "o-2".into(),
        points: 1,
        ..Default::default()
    });
    oversized.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap());
    let state = ["a", "b", "c"].map(|k| format!("{k}={}", "x".repeat(200))).join(",");
    oversized.metadata_mut().insert("tracestate", state.parse().unwrap());
    client.earn(oversized).await.unwrap();
    let row = pg.query_one("SELECT tracestate FROM tally_events WHERE idempotency_key = 'k-2'", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "", "an oversized tracestate is dropped");

    // A caller that did not sample its trace is not sampled here (the default sampler follows the
    // parent): nothing of the call is sent, and its event records the caller's context as it came.
    const UNSAMPLED: &str = "0af7651916cd43dd8448eb211c80319c";
    let mut unsampled = tonic::Request::new(EarnRequest {
        tenant_id: "acme".into(),
        wallet_id: "t-1".into(),
        idempotency_key: "k-3".into(),
        source_ref: "o-3".into(),
        points: 1,
        ..Default::default()
    });
    unsampled.metadata_mut().insert("traceparent", format!("00-{UNSAMPLED}-{PARENT_ID}-00").parse().unwrap());
    client.earn(unsampled).await.unwrap();
    let row = pg.query_one("SELECT traceparent FROM tally_events WHERE idempotency_key = 'k-3'", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), format!("00-{UNSAMPLED}-{PARENT_ID}-00"));

    // A read crosses the mailbox in the call's trace too.
    let mut read = tonic::Request::new(GetWalletRequest { tenant_id: "acme".into(), wallet_id: "t-1".into(), ..Default::default() });
    read.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap());
    client.get_wallet(read).await.unwrap();
    let read_span = receiver.until("server span of GetWallet", |s| in_trace(s) && s.name == "tally.v1.WalletService/GetWallet").await;
    let summary = receiver.until("the wallet actor's read", |s| in_trace(s) && s.name == "wallet.summary").await;
    assert!(descends(&receiver.spans(), &summary, &read_span), "the actor's read is in the call's trace");

    // The timers' run of a due hold is a trace of its own, with the command it sent.
    let hold = AuthorizeRedemptionRequest {
        tenant_id: "acme".into(),
        wallet_id: "t-1".into(),
        hold_id: "h-1".into(),
        points: 5,
        timeout_seconds: 1,
        ..Default::default()
    };
    client.authorize_redemption(hold).await.unwrap();
    let run_due = receiver.until("the timers' run of the due hold", |s| s.name == "timers.run_due").await;
    assert!(run_due.parent_span_id.is_empty(), "a root span");
    assert!(attributes(&run_due).contains_key("late_ms"), "{:?}", attributes(&run_due));
    let ran = receiver.until("the due command", |s| s.name == "wallet.command" && s.trace_id == run_due.trace_id).await;
    assert_eq!(attributes(&ran).get("kind").map(String::as_str), Some("run_due"));
    assert!(descends(&receiver.spans(), &ran, &run_due));
    assert!(receiver.spans().iter().all(|(_, s)| hex(&s.trace_id) != UNSAMPLED), "an unsampled call sent spans");
    // Nothing starts a trace of its own but a call and a timers' run: no stray roots from the unsampled
    // call's work (an append or commit below a library's span).
    let roots: Vec<String> = receiver.spans().into_iter().filter(|(_, s)| s.parent_span_id.is_empty()).map(|(_, s)| s.name).collect();
    assert!(roots.iter().all(|name| name.contains('/') || name == "timers.run_due"), "{roots:?}");

    // A call without a traceparent starts a trace of its own; a caller's mistake is not a server error.
    let missing = client.get_wallet(GetWalletRequest { tenant_id: "acme".into(), wallet_id: "nobody".into(), ..Default::default() }).await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
    let own = receiver.until("a span of GetWallet", |s| !in_trace(s) && s.name == "tally.v1.WalletService/GetWallet").await;
    assert_ne!(hex(&own.trace_id), TRACE_ID);
    assert!(own.parent_span_id.is_empty(), "a root span");
    assert_eq!(attributes(&own).get("rpc.grpc.status_code").map(String::as_str), Some("5"));
    assert_ne!(own.status.as_ref().map(|s| s.code), Some(2), "NOT_FOUND is not the server's error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_off_sends_nothing() {
    let receiver = Received::default();
    let endpoint = receiver.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let env =
        [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_TRACES_SAMPLER", "always_off"), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let server = TallyServer::start_with_env(dir.path(), &[], &env);
    let mut client = server.client().await;
    for n in 0..5 {
        let enroll =
            EnrollRequest { tenant_id: "demo".into(), wallet_id: format!("s-{n}"), idempotency_key: "e".into(), ..Default::default() };
        client.enroll(enroll).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());
}

/// `--log-format json`: every line a JSON object; a line written inside a call's trace names its trace
/// and span, so logs and traces join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_trace_they_were_written_in() {
    let receiver = Received::default();
    let endpoint = receiver.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("RUST_LOG", "warn,tally_engine::actors=debug")];
    let server = TallyServer::start_with_env(dir.path(), &["--log-format", "json"], &env);
    let mut client = server.client().await;
    let mut enroll = tonic::Request::new(EnrollRequest {
        tenant_id: "demo".into(),
        wallet_id: "j-1".into(),
        idempotency_key: "e".into(),
        ..Default::default()
    });
    enroll.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap());
    client.enroll(enroll).await.unwrap();
    let started = Instant::now();
    let recovered = loop {
        let lines: Vec<serde_json::Value> = server
            .stderr()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
            .collect();
        if let Some(line) = lines.into_iter().find(|l| l["message"] == "wallet recovered") {
            break line;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no 'wallet recovered' line in {}", server.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(recovered["trace_id"], TRACE_ID, "{recovered}");
    assert_eq!(recovered["span"], "wallet.command", "{recovered}");
    assert_eq!(recovered["level"], "DEBUG");
    assert_eq!(recovered["span_id"].as_str().map(str::len), Some(16), "{recovered}");
    assert!(recovered["stream"].as_str().is_some_and(|s| s.ends_with("j-1")), "the event's own fields: {recovered}");
}

/// Which node decided a call (`x-tally-node`).
fn decided_by<T>(answer: &Result<tonic::Response<T>, tonic::Status>) -> String {
    let metadata = match answer {
        Ok(response) => response.metadata(),
        Err(status) => status.metadata(),
    };
    metadata.get("x-tally-node").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

/// A call forwarded to its wallet's owner stays one trace: the first node's server span, its
/// `cluster.forward` client span, the owner's server span and the owner's actor, parent to child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_call_is_one_trace_across_nodes() {
    let receiver = Received::default();
    let endpoint = receiver.serve().await;
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("--store={}", database.postgres_url);
    let gossip: Vec<String> = (0..2).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()).collect();
    let start = |name: &str, own: &str, join: Option<&str>| {
        let mut args =
            vec![store.as_str(), "--tenant", "acme", "--node-id", name, "--cluster-listen", own, "--otlp-endpoint", endpoint.as_str()];
        args.extend(join.map(|seed| ["--join", seed]).into_iter().flatten());
        let service = format!("tally-{name}");
        // Node one samples only calls whose caller sampled them; node two, every call it starts.
        let ratio = if name == "one" { "0" } else { "1" };
        TallyServer::start_with_env(
            &dir.path().join(name),
            &args,
            &[
                ("OTEL_SERVICE_NAME", service.as_str()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", ratio),
            ],
        )
    };
    let one = start("one", &gossip[0], None);
    let _two = start("two", &gossip[1], Some(&gossip[0]));
    let mut client = one.client().await;

    // A wallet node two owns, once node one sees it so.
    let started = Instant::now();
    let wallet = 'found: loop {
        for n in 0..32 {
            let wallet = format!("f-{n}");
            let enroll =
                EnrollRequest { tenant_id: "acme".into(), wallet_id: wallet.clone(), idempotency_key: "e".into(), ..Default::default() };
            if decided_by(&client.enroll(enroll).await) == "two" {
                break 'found wallet;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20), "node one forwarded nothing to node two within 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // A call node one does not sample, forwarded: node two does not start a trace of its second half.
    let unsampled = EarnRequest {
        tenant_id: "acme".into(),
        wallet_id: wallet.clone(),
        idempotency_key: "k-0".into(),
        source_ref: "o-0".into(),
        points: 10,
        ..Default::default()
    };
    assert_eq!(decided_by(&client.earn(unsampled).await), "two");

    let mut earn = tonic::Request::new(EarnRequest {
        tenant_id: "acme".into(),
        wallet_id: wallet,
        idempotency_key: "k-1".into(),
        source_ref: "o-1".into(),
        points: 10,
        ..Default::default()
    });
    earn.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap());
    let answer = client.earn(earn).await;
    assert_eq!(decided_by(&answer), "two", "{answer:?}");

    let in_trace = |s: &Span| hex(&s.trace_id) == TRACE_ID;
    let earn_span = |s: &Span| in_trace(s) && s.name == "tally.v1.WalletService/Earn";
    let first = receiver.until("node one's server span", |s| earn_span(s) && hex(&s.parent_span_id) == PARENT_ID).await;
    let owner = receiver.until("node two's server span", |s| earn_span(s) && hex(&s.parent_span_id) != PARENT_ID).await;
    let forward = receiver.until("the forward that reached it", |s| in_trace(s) && s.span_id == owner.parent_span_id).await;
    assert_eq!(forward.name, "cluster.forward");
    assert_eq!(forward.parent_span_id, first.span_id, "the forward is node one's call's child");
    assert_eq!(forward.kind, SpanKind::Client as i32);
    assert_eq!(attributes(&forward).get("tally.peer").map(String::as_str), Some("two"));
    assert_eq!(attributes(&forward).get("rpc.grpc.status_code").map(String::as_str), Some("0"));
    let command = receiver.until("node two's actor span", |s| in_trace(s) && s.name == "wallet.command").await;
    assert!(descends(&receiver.spans(), &command, &owner), "the owner's actor is in the owner's call");
    let services: BTreeSet<String> = receiver.spans().into_iter().filter(|(_, s)| in_trace(s)).map(|(service, _)| service).collect();
    assert_eq!(services, BTreeSet::from(["tally-one".to_owned(), "tally-two".to_owned()]), "both nodes sent their part");
    // The unsampled call went first, so its spans, had node two made any, were exported by now.
    let strays: Vec<String> = receiver
        .spans()
        .into_iter()
        .filter(|(service, s)| service == "tally-two" && s.name == "tally.v1.WalletService/Earn" && !in_trace(s))
        .map(|(_, s)| hex(&s.trace_id))
        .collect();
    assert!(strays.is_empty(), "node two traced the second half of calls node one did not sample: {strays:?}");
}
