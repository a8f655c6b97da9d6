//! Issue 20 item 6: customer lookup against the real `tally` process. A POS attaches a phone number or a
//! card to a wallet and finds the wallet by it, however the number is written; one identifier is one
//! wallet's; a refusal says why (the reason in an ErrorInfo, the field of a malformed value); what was
//! acknowledged survives `kill -9`; closing a wallet lets its identifiers go; the log and the history keep
//! the kind, never the value.

use tally_proto::v1::keys_service_client::KeysServiceClient;
use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::{
    AttachIdentifierRequest, CloseRequest, DetachIdentifierRequest, EnrollRequest, FindWalletRequest, IdentifierKind,
    ListTransactionsRequest, TransactionKind, WalletMutation,
};
use tally_proto::v1::{CreateKeyRequest, Role};
use tally_tests::{Authed, Key, TallyServer};
use tonic::Code;
use tonic_types::StatusExt;

async fn enroll(wallets: &mut WalletServiceClient<Authed>, wallet: &str) {
    let request = EnrollRequest {
        tenant_id: "demo".into(),
        wallet_id: wallet.into(),
        idempotency_key: format!("enroll-{wallet}"),
        ..Default::default()
    };
    wallets.enroll(request).await.unwrap();
}

async fn attach(
    wallets: &mut WalletServiceClient<Authed>,
    wallet: &str,
    kind: IdentifierKind,
    value: &str,
    key: &str,
) -> Result<WalletMutation, tonic::Status> {
    let request = AttachIdentifierRequest {
        tenant_id: "demo".into(),
        wallet_id: wallet.into(),
        kind: kind as i32,
        value: value.into(),
        idempotency_key: key.into(),
    };
    wallets.attach_identifier(request).await.map(tonic::Response::into_inner)
}

async fn find(wallets: &mut WalletServiceClient<Authed>, kind: IdentifierKind, value: &str) -> Result<String, tonic::Status> {
    let request = FindWalletRequest { tenant_id: "demo".into(), kind: kind as i32, value: value.into() };
    wallets.find_wallet(request).await.map(|r| r.into_inner().wallet_id)
}

/// The reason of an ErrorInfo, with its metadata's `wallet_id`.
fn reason(status: &tonic::Status) -> (String, String) {
    status.get_details_error_info().map_or_else(Default::default, |info| {
        assert_eq!(info.domain, "tally.v1");
        (info.reason, info.metadata.get("wallet_id").cloned().unwrap_or_default())
    })
}

fn field(status: &tonic::Status) -> String {
    status.get_details_bad_request().and_then(|b| b.field_violations.first().map(|v| v.field.clone())).unwrap_or_default()
}

#[tokio::test]
async fn a_pos_finds_a_wallet_by_what_the_customer_carries() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = TallyServer::start(&data, &["--tenant", "demo"]);
    let mut platform = server.client().await;
    for wallet in ["ann", "bob"] {
        enroll(&mut platform, wallet).await;
    }
    // The till's own key, as a POS holds it.
    let mut keys = KeysServiceClient::new(server.channel().await);
    let request =
        CreateKeyRequest { tenant_id: "demo".into(), roles: vec![Role::Pos as i32], label: "till-7".into(), ..Default::default() };
    let pos_key = keys.create_key(request).await.unwrap().into_inner().token;
    let mut wallets = WalletServiceClient::new(server.channel_with(Key::new(&pos_key)).await);
    let attached = attach(&mut wallets, "ann", IdentifierKind::Phone, "+44 20 7946 0000", "pos-1").await.unwrap();
    let t = &attached.transactions[0];
    assert_eq!((t.kind, t.reference.as_str(), t.points), (TransactionKind::IdentifierAttached as i32, "phone", 0));
    let shown = attached.wallet.unwrap().identifiers;
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].kind, IdentifierKind::Phone as i32);
    assert_eq!(shown[0].lookup.len(), 64, "its hash, not its value");
    attach(&mut wallets, "ann", IdentifierKind::Card, "4000 1234 5678", "pos-2").await.unwrap();

    // Found however the number is written.
    for written in ["+442079460000", "0044 (20) 7946-0000"] {
        assert_eq!(find(&mut wallets, IdentifierKind::Phone, written).await.unwrap(), "ann", "{written}");
    }
    assert_eq!(find(&mut wallets, IdentifierKind::Card, "400012345678").await.unwrap(), "ann");
    let unknown = find(&mut wallets, IdentifierKind::Phone, "+33 1 23 45 67 89").await.unwrap_err();
    assert_eq!((unknown.code(), reason(&unknown).0.as_str()), (Code::NotFound, "IDENTIFIER_NOT_FOUND"));
    let card_as_crm = find(&mut wallets, IdentifierKind::CrmId, "400012345678").await.unwrap_err();
    assert_eq!(card_as_crm.code(), Code::NotFound, "a kind is part of the identifier");

    // One wallet's at a time; refusals say why.
    let taken = attach(&mut wallets, "bob", IdentifierKind::Phone, "+442079460000", "pos-3").await.unwrap_err();
    assert_eq!((taken.code(), reason(&taken)), (Code::AlreadyExists, ("IDENTIFIER_TAKEN".into(), "ann".into())));
    let again = attach(&mut wallets, "ann", IdentifierKind::Phone, "+442079460000", "pos-4").await.unwrap_err();
    assert_eq!((again.code(), reason(&again).0.as_str()), (Code::AlreadyExists, "IDENTIFIER_ALREADY_ATTACHED"));
    assert!(attach(&mut wallets, "ann", IdentifierKind::Phone, "+44 20 7946 0000", "pos-1").await.unwrap().replayed);
    let national = attach(&mut wallets, "bob", IdentifierKind::Phone, "020 7946 0000", "pos-5").await.unwrap_err();
    assert_eq!((national.code(), field(&national).as_str()), (Code::InvalidArgument, "value"));
    let no_kind = attach(&mut wallets, "bob", IdentifierKind::Unspecified, "x", "pos-6").await.unwrap_err();
    assert_eq!((no_kind.code(), field(&no_kind).as_str()), (Code::InvalidArgument, "kind"));
    let no_wallet = attach(&mut wallets, "zed", IdentifierKind::Email, "zed@example.org", "pos-7").await.unwrap_err();
    assert_eq!(no_wallet.code(), Code::NotFound);

    // What was acknowledged survives kill -9.
    drop(platform);
    server.kill_9();
    let server = TallyServer::start(&data, &["--tenant", "demo"]);
    let mut wallets = server.client().await;
    assert_eq!(find(&mut wallets, IdentifierKind::Phone, "+442079460000").await.unwrap(), "ann");

    // Detached, or its wallet closed: free for another.
    let detach = DetachIdentifierRequest {
        tenant_id: "demo".into(),
        wallet_id: "ann".into(),
        kind: IdentifierKind::Phone as i32,
        value: "0044 20 7946 0000".into(),
        idempotency_key: "desk-1".into(),
        reason: "new number".into(),
    };
    wallets.detach_identifier(detach.clone()).await.unwrap();
    let gone = wallets.detach_identifier(DetachIdentifierRequest { idempotency_key: "desk-2".into(), ..detach }).await.unwrap_err();
    assert_eq!((gone.code(), reason(&gone).0.as_str()), (Code::NotFound, "IDENTIFIER_NOT_ATTACHED"));
    assert_eq!(find(&mut wallets, IdentifierKind::Phone, "+442079460000").await.unwrap_err().code(), Code::NotFound);
    attach(&mut wallets, "bob", IdentifierKind::Phone, "+442079460000", "pos-8").await.unwrap();
    assert_eq!(find(&mut wallets, IdentifierKind::Phone, "+442079460000").await.unwrap(), "bob");
    let close =
        CloseRequest { tenant_id: "demo".into(), wallet_id: "ann".into(), idempotency_key: "close-ann".into(), reason: "left".into() };
    wallets.close(close).await.unwrap();
    assert_eq!(find(&mut wallets, IdentifierKind::Card, "400012345678").await.unwrap_err().code(), Code::NotFound);
    attach(&mut wallets, "bob", IdentifierKind::Card, "400012345678", "pos-9").await.unwrap();

    // The history names kinds and reasons, never a value; nor does the log.
    let history = ListTransactionsRequest { tenant_id: "demo".into(), wallet_id: "ann".into(), page_size: 50, page_token: String::new() };
    let history = wallets.list_transactions(history).await.unwrap().into_inner().transactions;
    let detached: Vec<_> = history
        .iter()
        .filter(|t| t.kind == TransactionKind::IdentifierDetached as i32)
        .map(|t| (t.reference.as_str(), t.reason.as_str()))
        .collect();
    assert_eq!(detached, [("card", "wallet closed"), ("phone", "new number")]);
    drop(wallets);
    let mut server = server;
    server.terminate();
    let mut log = Vec::new();
    for entry in walkdir(&data) {
        log.extend(std::fs::read(entry).unwrap_or_default());
    }
    for value in [&b"2079460000"[..], b"400012345678", b"4000 1234"] {
        assert!(!log.windows(value.len()).any(|w| w == value), "{} is in the data folder", String::from_utf8_lossy(value));
    }
}

/// Every file under `dir`.
fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walkdir(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn a_copied_log_finds_what_its_source_found() {
    let dir = tempfile::tempdir().unwrap();
    let (data, copy) = (dir.path().join("data"), dir.path().join("copy"));
    let mut server = TallyServer::start(&data, &["--tenant", "demo"]);
    let mut wallets = server.client().await;
    enroll(&mut wallets, "ann").await;
    attach(&mut wallets, "ann", IdentifierKind::Phone, "+44 20 7946 0000", "pos-1").await.unwrap();
    drop(wallets);
    server.terminate();
    let out = server
        .cli()
        .args(["store", "copy", "--from", &format!("file://{}", data.display()), "--to", &format!("file://{}", copy.display())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::copy(data.join("platform.key"), copy.join("platform.key")).unwrap();
    let moved = TallyServer::start(&copy, &["--tenant", "demo"]);
    let mut wallets = moved.client().await;
    assert_eq!(find(&mut wallets, IdentifierKind::Phone, "+442079460000").await.unwrap(), "ann", "the tenant's lookup key came along");
    enroll(&mut wallets, "bob").await;
    let taken = attach(&mut wallets, "bob", IdentifierKind::Phone, "+442079460000", "pos-2").await.unwrap_err();
    assert_eq!((taken.code(), reason(&taken)), (Code::AlreadyExists, ("IDENTIFIER_TAKEN".into(), "ann".into())), "still one wallet's");
}

#[tokio::test]
async fn the_command_line_attaches_and_finds() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(&dir.path().join("data"), &["--tenant", "demo"]);
    let mut wallets = server.client().await;
    enroll(&mut wallets, "ann").await;
    let run = |args: &[&str]| {
        let out = server.cli().args(["wallet"]).args(args).args(["--server", server.url.as_str()]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let attached = run(&["attach-identifier", "--wallet", "ann", "--kind", "email", "--value", "Ann@Example.org", "--key", "web-1"]);
    assert!(attached.contains("identifier attached"), "{attached}");
    let found = run(&["find", "--kind", "email", "--value", "ann@example.ORG"]);
    assert!(found.contains("demo/ann") && found.contains("found by  email"), "{found}");
    let history = run(&["history", "--wallet", "ann"]);
    assert!(history.contains("identifier attached") && history.contains("email"), "{history}");
    run(&["detach-identifier", "--wallet", "ann", "--kind", "email", "--value", "ann@example.org", "--key", "web-2"]);
    let out =
        server.cli().args(["wallet", "find", "--kind", "email", "--value", "ann@example.org", "--server", server.url.as_str()]).output();
    let out = out.unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no wallet"), "{out:?}");
}

#[tokio::test]
async fn a_customer_enrolled_with_a_friends_code_is_recorded_as_referred() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(&dir.path().join("data"), &["--tenant", "demo"]);
    let mut wallets = server.client().await;
    enroll(&mut wallets, "ann").await;
    attach(&mut wallets, "ann", IdentifierKind::ReferralCode, "ann-2026", "code-1").await.unwrap();
    let with_code = |wallet: &str, code: &str| EnrollRequest {
        tenant_id: "demo".into(),
        wallet_id: wallet.into(),
        idempotency_key: format!("enroll-{wallet}"),
        referral_code: code.into(),
        ..Default::default()
    };
    let bob = wallets.enroll(with_code("bob", "ANN-2026")).await.unwrap().into_inner();
    let kinds: Vec<i32> = bob.transactions.iter().map(|t| t.kind).collect();
    assert_eq!(kinds, [TransactionKind::Enrolled as i32, TransactionKind::ReferralRecorded as i32]);
    assert_eq!(bob.transactions[1].counterpart_wallet_id, "ann");
    assert_eq!((bob.wallet.unwrap().referred_by.as_str(), bob.replayed), ("ann", false));
    let again = wallets.enroll(with_code("bob", "ann-2026")).await.unwrap().into_inner();
    assert!(again.replayed && again.transactions.len() == 2, "a retry answers both, records nothing");

    // The code is part of the enrolment: the same key with another code, or with none, is another request.
    let switched = wallets.enroll(with_code("bob", "")).await.unwrap_err();
    assert_eq!(switched.code(), Code::AlreadyExists);
    enroll(&mut wallets, "dan").await;
    let late = wallets.enroll(with_code("dan", "ann-2026")).await.unwrap_err();
    assert_eq!(late.code(), Code::AlreadyExists, "a customer enrolled without a code is not referred later");

    // Refusals name what is wrong, and enrol nobody.
    let unknown = wallets.enroll(with_code("cy", "NOBODY-1")).await.unwrap_err();
    assert_eq!((unknown.code(), reason(&unknown).0.as_str()), (Code::NotFound, "REFERRAL_CODE_NOT_FOUND"));
    let malformed = wallets.enroll(with_code("cy", "a b")).await.unwrap_err();
    assert_eq!((malformed.code(), field(&malformed).as_str()), (Code::InvalidArgument, "referral_code"));
    let cy = tally_proto::v1::GetWalletRequest { tenant_id: "demo".into(), wallet_id: "cy".into(), ..Default::default() };
    assert_eq!(wallets.get_wallet(cy).await.unwrap_err().code(), Code::NotFound, "cy was not enrolled");
    let own = wallets.enroll(EnrollRequest { idempotency_key: "again".into(), ..with_code("ann", "ann-2026") }).await.unwrap_err();
    assert_eq!((own.code(), field(&own).as_str()), (Code::InvalidArgument, "referral_code"));
    let other = wallets.enroll(with_code("bob", "BOB-2026")).await.unwrap_err();
    assert_eq!(other.code(), Code::NotFound, "an unknown code, whatever else");
    attach(&mut wallets, "dan", IdentifierKind::ReferralCode, "dan-2026", "code-2").await.unwrap();
    let other_referrer = wallets.enroll(with_code("bob", "dan-2026")).await.unwrap_err();
    assert_eq!(other_referrer.code(), Code::AlreadyExists, "one referral per customer");
    let bob = tally_proto::v1::GetWalletRequest { tenant_id: "demo".into(), wallet_id: "bob".into(), ..Default::default() };
    assert_eq!(wallets.get_wallet(bob).await.unwrap().into_inner().referred_by, "ann");
}

#[tokio::test]
async fn tally_bench_finds_wallets_by_their_cards() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(&dir.path().join("data"), &["--tenant", "demo"]);
    let args = ["bench", "--find", "--read-percent", "100", "--requests", "100", "--concurrency", "4", "--wallets", "12"];
    let out = server.cli().args(args).args(["--tenant", "demo", "--server", server.url.as_str()]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!report.contains("errors"), "every wallet was found: {report}");
    let reads: i64 = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("reads").and_then(|rest| rest.split_whitespace().next()).and_then(|n| n.parse().ok()))
        .expect("a count of reads");
    assert!(reads >= 100, "{report}");
    // The cards the bench attached are there, each once.
    let mut wallets = server.client().await;
    assert_eq!(find(&mut wallets, IdentifierKind::Card, "BENCH00000011").await.unwrap(), "bench-11");
}
