//! Customer lookup (issue 20 item 6): identifiers claimed through the log, one wallet at a time; their
//! values kept nowhere; released by a detach, a closure, an erasure; a claim a crash cut off settled.

mod flow_node;

use std::sync::Arc;

use flow_node::{Node, start, tenant, wallet};
use tally_engine::actors::{CommandMeta, IdentifierBook, WalletError, WalletKey};
use tally_engine::clock::ManualClock;
use tally_engine::codec::{self, IdentifierClaim};
use tally_engine::domain::identifiers::{IDENTIFIERS_PER_WALLET_MAX, IdentifierKind};
use tally_engine::domain::{Command, CommandBody, ProgramSettings, Rejection};
use tally_engine::store::{EventStore, ExpectedVersion, InMemoryStore};
use tally_proto::v1::IdentifierClaimed;

const PHONE: &str = "+44 20 7946 0000";

struct Shop {
    store: Arc<dyn EventStore>,
    node: Node,
    book: IdentifierBook,
}

async fn shop() -> Shop {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(1_767_225_600_000));
    let node = start(&store, &clock, None, ProgramSettings::default()).await;
    for id in ["ann", "bob"] {
        node.open_wallet(id, 100).await;
    }
    Shop { book: IdentifierBook::new(Arc::clone(&store)), store, node }
}

impl Shop {
    async fn lookup(&self, kind: IdentifierKind, value: &str) -> String {
        self.book.lookup_to_attach(&tenant(), kind, value).await.unwrap()
    }

    async fn send(&self, id: &str, key: &str, body: CommandBody) -> Result<tally_engine::actors::CommandOutcome, WalletError> {
        self.node.registry.execute(&WalletKey::new(tenant(), wallet(id)), Command::new(key, body), CommandMeta::default()).await
    }

    async fn attach(&self, id: &str, key: &str, value: &str) -> Result<tally_engine::actors::CommandOutcome, WalletError> {
        let lookup = self.lookup(IdentifierKind::Phone, value).await;
        self.send(id, key, CommandBody::AttachIdentifier { kind: IdentifierKind::Phone, lookup }).await
    }

    async fn detach(&self, id: &str, key: &str, value: &str) -> Result<tally_engine::actors::CommandOutcome, WalletError> {
        let lookup = self.lookup(IdentifierKind::Phone, value).await;
        self.send(id, key, CommandBody::DetachIdentifier { kind: IdentifierKind::Phone, lookup, reason: "moved".into() }).await
    }

    async fn holder(&self, value: &str) -> Option<String> {
        let lookup = self.lookup(IdentifierKind::Phone, value).await;
        self.book.holder(&tenant(), &lookup).await.unwrap().map(|h| h.wallet_id)
    }

    async fn carried(&self, id: &str) -> Vec<(String, i32)> {
        self.node.summary(id).await.identifiers
    }
}

fn rejection(result: Result<impl std::fmt::Debug, WalletError>) -> Rejection {
    match result {
        Err(WalletError::Rejected(rejection)) => rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn an_identifier_belongs_to_one_wallet_at_a_time() {
    let shop = shop().await;
    let lookup = shop.lookup(IdentifierKind::Phone, PHONE).await;
    assert_eq!(shop.lookup(IdentifierKind::Phone, "0044 (20) 7946-0000").await, lookup, "one number, however written");
    assert!(!shop.attach("ann", "a-1", PHONE).await.unwrap().replayed);
    assert_eq!(shop.carried("ann").await, [(lookup.clone(), IdentifierKind::Phone as i32)]);
    assert_eq!(shop.holder(PHONE).await.as_deref(), Some("ann"));

    // The same call again is answered; another call for it is told it is there; another wallet is refused.
    assert!(shop.attach("ann", "a-1", PHONE).await.unwrap().replayed);
    assert_eq!(rejection(shop.attach("ann", "a-2", PHONE).await), Rejection::IdentifierAlreadyAttached);
    assert_eq!(rejection(shop.attach("bob", "b-1", PHONE).await), Rejection::IdentifierTaken { wallet_id: "ann".into() });
    assert!(shop.carried("bob").await.is_empty(), "a refused attach records nothing");

    // Detached, it is free for the next.
    assert_eq!(rejection(shop.detach("bob", "b-2", PHONE).await), Rejection::IdentifierNotAttached);
    shop.detach("ann", "a-3", PHONE).await.unwrap();
    assert_eq!(shop.holder(PHONE).await, None);
    assert!(shop.carried("ann").await.is_empty());
    shop.attach("bob", "b-3", PHONE).await.unwrap();
    assert_eq!(shop.holder(PHONE).await.as_deref(), Some("bob"));

    // The log holds the lookup, never the value, in any form a POS might send it.
    let everything = shop.store.read_all(0, 10_000).await.unwrap();
    let bytes: Vec<u8> = everything.iter().flat_map(|e| e.data.payload.clone()).collect();
    for value in ["+442079460000", "2079460000"] {
        assert!(!bytes.windows(value.len()).any(|w| w == value.as_bytes()), "{value} is in the log");
    }
    shop.node.stop().await;
}

#[tokio::test]
async fn a_closed_wallet_and_an_erased_customer_let_their_identifiers_go() {
    let shop = shop().await;
    shop.attach("ann", "a-1", PHONE).await.unwrap();
    let card = shop.lookup(IdentifierKind::Card, "4000-1234").await;
    shop.send("ann", "a-2", CommandBody::AttachIdentifier { kind: IdentifierKind::Card, lookup: card.clone() }).await.unwrap();
    assert_eq!(shop.carried("ann").await.len(), 2);
    shop.node.close("ann").await;
    assert!(shop.carried("ann").await.is_empty());
    assert_eq!(shop.holder(PHONE).await, None);
    assert_eq!(shop.book.holder(&tenant(), &card).await.unwrap(), None);
    assert_eq!(rejection(shop.attach("ann", "a-3", PHONE).await), Rejection::WalletClosed);

    shop.attach("bob", "b-1", PHONE).await.unwrap();
    shop.send("bob", "b-2", CommandBody::EraseCustomer { reason: "ticket 42".into() }).await.unwrap();
    assert!(shop.carried("bob").await.is_empty(), "identifiers are the customer's: they go with the erasure");
    assert_eq!(shop.holder(PHONE).await, None);
    assert_eq!(rejection(shop.attach("bob", "b-3", PHONE).await), Rejection::CustomerAlreadyErased, "nor come back after it");
    shop.node.stop().await;
}

#[tokio::test]
async fn a_claim_a_crash_cut_off_is_the_wallets_to_finish_or_to_let_go() {
    let shop = shop().await;
    // Ann's actor claimed the number, then the process died before her wallet recorded it.
    let lookup = shop.lookup(IdentifierKind::Phone, PHONE).await;
    let claim = IdentifierClaim::Claimed(IdentifierClaimed {
        tenant_id: "acme".into(),
        wallet_id: "ann".into(),
        kind: IdentifierKind::Phone as i32,
        lookup: lookup.clone(),
    });
    let command = Command::new("a-1", CommandBody::AttachIdentifier { kind: IdentifierKind::Phone, lookup: lookup.clone() });
    let data = codec::encode_identifier(&claim, &command, 1_767_225_600_000, &CommandMeta::default());
    shop.store.append(&codec::identifier_stream(&tenant(), &lookup).unwrap(), ExpectedVersion::Exact(0), vec![data]).await.unwrap();
    assert!(shop.carried("ann").await.is_empty(), "claimed, not attached");
    assert_eq!(rejection(shop.attach("bob", "b-1", PHONE).await), Rejection::IdentifierTaken { wallet_id: "ann".into() });

    // Ann's retry finishes it...
    shop.attach("ann", "a-1", PHONE).await.unwrap();
    assert_eq!(shop.carried("ann").await.len(), 1);
    shop.detach("ann", "a-2", PHONE).await.unwrap();

    // ...or, claimed again and cut off again, a detach of what she does not carry lets it go.
    let data = codec::encode_identifier(&claim, &command, 1_767_225_600_000, &CommandMeta::default());
    let stream = codec::identifier_stream(&tenant(), &lookup).unwrap();
    let version = shop.store.stream_version(&stream).await.unwrap();
    shop.store.append(&stream, ExpectedVersion::Exact(version), vec![data]).await.unwrap();
    assert_eq!(rejection(shop.detach("ann", "a-3", PHONE).await), Rejection::IdentifierNotAttached);
    assert_eq!(shop.holder(PHONE).await, None);
    shop.attach("bob", "b-1", PHONE).await.unwrap();
    shop.node.stop().await;
}

#[tokio::test]
async fn a_detach_recorded_but_not_released_is_released_by_its_retry() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(1_767_225_600_000));
    let node = start(&store, &clock, None, ProgramSettings::default()).await;
    node.open_wallet("ann", 0).await;
    let book = IdentifierBook::new(Arc::clone(&store));
    let lookup = book.lookup_to_attach(&tenant(), IdentifierKind::Phone, PHONE).await.unwrap();
    node.run("ann", "a-1", CommandBody::AttachIdentifier { kind: IdentifierKind::Phone, lookup: lookup.clone() }).await;
    node.stop().await;
    // The detach was recorded, then the process died before it released the claim.
    let detach =
        Command::new("a-2", CommandBody::DetachIdentifier { kind: IdentifierKind::Phone, lookup: lookup.clone(), reason: "moved".into() });
    let event = tally_engine::domain::Event {
        idempotency_key: detach.idempotency_key.clone(),
        command_fingerprint: detach.fingerprint(),
        recorded_at_ms: 1_767_225_600_000,
        change: tally_engine::domain::Change::IdentifierDetached(tally_proto::v1::IdentifierDetached {
            kind: IdentifierKind::Phone as i32,
            lookup: lookup.clone(),
            reason: "moved".into(),
        }),
    };
    let stream = codec::wallet_stream(&tenant(), &wallet("ann"));
    let version = store.stream_version(&stream).await.unwrap();
    store.append(&stream, ExpectedVersion::Exact(version), vec![codec::encode(&event, &CommandMeta::default())]).await.unwrap();
    let node = start(&store, &clock, None, ProgramSettings::default()).await;
    assert_eq!(book.holder(&tenant(), &lookup).await.unwrap().map(|h| h.wallet_id).as_deref(), Some("ann"), "claimed, not shown");
    assert!(node.summary("ann").await.identifiers.is_empty());
    // The retry is answered from its receipt, and lets the claim go.
    let again = node.registry.execute(&WalletKey::new(tenant(), wallet("ann")), detach, CommandMeta::default()).await.unwrap();
    assert!(again.replayed);
    assert_eq!(book.holder(&tenant(), &lookup).await.unwrap(), None);
    node.stop().await;
}

#[tokio::test]
async fn a_wallet_carries_at_most_sixteen_and_a_refused_one_is_not_claimed() {
    let shop = shop().await;
    for i in 0..IDENTIFIERS_PER_WALLET_MAX {
        let lookup = shop.lookup(IdentifierKind::Card, &format!("CARD{i:04}")).await;
        shop.send("ann", &format!("c-{i}"), CommandBody::AttachIdentifier { kind: IdentifierKind::Card, lookup }).await.unwrap();
    }
    let one_more = shop.lookup(IdentifierKind::Card, "CARD9999").await;
    let refused = shop.send("ann", "c-x", CommandBody::AttachIdentifier { kind: IdentifierKind::Card, lookup: one_more.clone() }).await;
    assert_eq!(rejection(refused), Rejection::TooManyIdentifiers { max: IDENTIFIERS_PER_WALLET_MAX });
    assert_eq!(shop.book.holder(&tenant(), &one_more).await.unwrap(), None);
    let taken = shop.send("bob", "b-1", CommandBody::AttachIdentifier { kind: IdentifierKind::Card, lookup: one_more }).await;
    assert!(taken.is_ok(), "{taken:?}");
    shop.node.stop().await;
}

#[tokio::test]
async fn malformed_identifiers_are_refused_naming_the_field() {
    let shop = shop().await;
    let field = |result: Result<String, WalletError>| match result {
        Err(WalletError::Rejected(Rejection::InvalidField(e))) => e.field.into_owned(),
        other => panic!("{other:?}"),
    };
    assert_eq!(field(shop.book.lookup_to_attach(&tenant(), IdentifierKind::Phone, "020 7946 0000").await), "value");
    assert_eq!(field(shop.book.lookup_to_attach(&tenant(), IdentifierKind::Unspecified, "x").await), "kind");
    // A command built elsewhere with a value where the lookup goes never reaches the log.
    let raw = CommandBody::AttachIdentifier { kind: IdentifierKind::Phone, lookup: "+442079460000".into() };
    match rejection(shop.send("ann", "a-1", raw).await) {
        Rejection::InvalidField(e) => assert_eq!(e.field, "lookup"),
        other => panic!("{other:?}"),
    }
    // Another tenant's lookup of the same number differs (a key of its own).
    let other = IdentifierBook::new(Arc::clone(&shop.store));
    let acme = other.lookup_to_attach(&tenant(), IdentifierKind::Phone, PHONE).await.unwrap();
    let globex = other.lookup_to_attach(&tally_engine::domain::TenantId::parse("globex").unwrap(), IdentifierKind::Phone, PHONE).await;
    assert_ne!(acme, globex.unwrap());
    assert_eq!(acme, shop.lookup(IdentifierKind::Phone, PHONE).await, "one key per tenant, kept");
    shop.node.stop().await;
}

#[tokio::test]
async fn a_referral_is_recorded_with_the_enrolment_and_never_by_the_wallet_itself() {
    let shop = shop().await;
    let enroll = |referrer: &str| CommandBody::Enroll { customer_ref: String::new(), sealed: None, referrer_wallet_id: referrer.into() };
    let cy = shop.send("cy", "enroll-cy", enroll("ann")).await.unwrap();
    let changes: Vec<&str> = cy.events.iter().map(|e| e.event.change.event_type()).collect();
    assert_eq!(changes, ["tally.v1.WalletEnrolledV2", "tally.v1.ReferralRecorded"], "one append");
    assert_eq!(shop.node.summary("cy").await.referred_by, "ann");
    assert!(shop.send("cy", "enroll-cy", enroll("ann")).await.unwrap().replayed, "a retry records it once");
    assert!(matches!(rejection(shop.send("cy", "enroll-cy", enroll("bob")).await), Rejection::IdempotencyKeyReused { .. }));
    assert!(matches!(rejection(shop.send("cy", "enroll-cy", enroll("")).await), Rejection::IdempotencyKeyReused { .. }));
    assert_eq!(rejection(shop.send("bob", "enroll-again", enroll("ann")).await), Rejection::AlreadyEnrolled, "only a new customer");
    match rejection(shop.send("dee", "enroll-dee", enroll("dee")).await) {
        Rejection::InvalidField(e) => assert_eq!(e.field, "referral_code"),
        other => panic!("{other:?}"),
    }
    assert!(shop.node.registry.summary(&WalletKey::new(tenant(), wallet("dee"))).await.is_err(), "a refused enrolment records nothing");
    shop.node.stop().await;
}
