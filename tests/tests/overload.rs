//! Issue 15 item 6, end to end: thousands of concurrent earns on one wallet with a short client deadline.
//! Each call the server answers gets a status a client can act on (never CANCELLED, which tells it
//! nothing: OK, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED), and
//! retrying every call that did not succeed, with the same key, applies each exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use tally_proto::v1::{EarnRequest, EnrollRequest, GetWalletRequest};
use tally_tests::TallyServer;
use tonic::Code;

const CALLS: usize = 3_000;

fn earn(n: usize) -> EarnRequest {
    EarnRequest {
        tenant_id: "demo".into(),
        wallet_id: "hot".into(),
        idempotency_key: format!("burst-{n}"),
        points: 1,
        source_ref: format!("burst-{n}"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_one_wallet_is_answered_usefully_and_retries_apply_each_call_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    let enroll = EnrollRequest { tenant_id: "demo".into(), wallet_id: "hot".into(), idempotency_key: "e".into(), ..Default::default() };
    client.enroll(enroll).await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(server.client().await);
    }
    let calls: Vec<_> = (0..CALLS)
        .map(|n| {
            let mut client = clients[n % clients.len()].clone();
            tokio::spawn(async move {
                let mut request = tonic::Request::new(earn(n));
                request.set_timeout(Duration::from_millis(1_500));
                // tonic's client gives up at the same deadline by itself ("Timeout expired", CANCELLED
                // made on this side): that is no answer of the server's, and is counted apart.
                let answer = client.earn(request).await;
                let gave_up = answer.as_ref().is_err_and(|s| {
                    (s.code() == Code::Cancelled && s.message() == "Timeout expired")
                        // Thousands of streams the client reset at once trip h2's reset-flood guard,
                        // which closes the connection: the client then hears nothing.
                        || (s.code() == Code::Unknown && s.message() == "transport error")
                });
                (n, if gave_up { None } else { Some(answer.map_or_else(|s| s.code(), |_| Code::Ok)) })
            })
        })
        .collect();
    let mut codes = BTreeMap::<String, usize>::new();
    let mut retry = Vec::new();
    for call in calls {
        let (n, code) = call.await.unwrap();
        *codes
            .entry(code.map_or_else(|| "no answer (client gave up, or its connection closed)".to_owned(), |c| format!("{c:?}")))
            .or_default() += 1;
        let useful = code.is_none_or(|c| matches!(c, Code::Ok | Code::DeadlineExceeded | Code::ResourceExhausted));
        assert!(useful, "call {n}: {code:?} ({codes:?})");
        if code != Some(Code::Ok) {
            retry.push(n);
        }
    }
    eprintln!("{CALLS} concurrent earns on one wallet, 1.5 s deadline: {codes:?}");
    for n in retry {
        loop {
            match client.earn(earn(n)).await {
                Ok(_) => break,
                Err(status) if status.code() == Code::ResourceExhausted => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(status) => panic!("retry of call {n}: {status:?}"),
            }
        }
    }
    let wallet = client
        .get_wallet(GetWalletRequest { tenant_id: "demo".into(), wallet_id: "hot".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(wallet.balance, CALLS as i64, "every call applied exactly once after the retries");
    assert_eq!(wallet.version, CALLS as u64 + 1, "one earn event per call, and the enrolment");
}
