//! Given/when/then tests of the wallet domain: every command and every rejection.

use tally_engine::codec;
use tally_engine::domain::rules::{Order, OrderLine};
use tally_engine::domain::{
    Change, Command, CommandBody, CommandFingerprint, Context, Decision, Event, FieldError, Money, ProgramSettings, Rejection,
    ReturnPolicy, TenantId, WalletId, WalletState, WalletStatus, apply, decide,
};
use tally_engine::personal;
use tally_engine::store::PersonalKey;
use tally_engine::store::{EventMetadata, RecordedEvent};
use tally_proto::v1::wallet_enrolled_v2::Customer;
use tally_proto::v1::{
    CustomerErased, EarnReversed, LotOpened, LotPoints, PersonalData, PointsAdjusted, PointsEarned, PointsRedeemed, SealedPersonalData,
    WalletClosed, WalletEnrolledV2,
};

const NOW: i64 = 1_767_225_600_000;

/// A wallet built from past commands, ready for the command under test.
struct Scenario {
    tenant: TenantId,
    wallet: WalletId,
    program: ProgramSettings,
    state: WalletState,
}

fn given(commands: &[Command]) -> Scenario {
    given_with(ProgramSettings::default(), commands)
}

fn given_with(program: ProgramSettings, commands: &[Command]) -> Scenario {
    let mut scenario = Scenario {
        tenant: TenantId::parse("acme").unwrap(),
        wallet: WalletId::parse("c-1").unwrap(),
        program,
        state: WalletState::default(),
    };
    for command in commands {
        match scenario.decide(command) {
            Ok(Decision::Append(events)) => events.iter().for_each(|e| apply(&mut scenario.state, e)),
            other => panic!("setup command {command:?} was not accepted: {other:?}"),
        }
    }
    scenario
}

impl Scenario {
    fn decide(&self, command: &Command) -> Result<Decision, Rejection> {
        let ctx = Context { tenant: &self.tenant, wallet: &self.wallet, now_ms: NOW, program: &self.program };
        decide(&self.state, command, &ctx)
    }

    /// Asserts the command is accepted with exactly these changes; returns the state after them.
    fn then_changes(mut self, command: Command, expected: &[Change]) -> WalletState {
        let Ok(Decision::Append(events)) = self.decide(&command) else {
            panic!("{command:?} was not accepted: {:?}", self.decide(&command))
        };
        let changes: Vec<Change> = events.iter().map(|e| e.change.clone()).collect();
        assert_eq!(changes, expected);
        for event in &events {
            assert_eq!(event.idempotency_key, command.idempotency_key);
            assert_eq!(event.command_fingerprint, command.fingerprint());
            assert_eq!(event.recorded_at_ms, NOW);
            apply(&mut self.state, event);
        }
        self.state
    }

    fn then_rejects(self, command: Command, expected: Rejection) {
        assert_eq!(self.decide(&command), Err(expected));
    }
}

fn cmd(key: &str, body: CommandBody) -> Command {
    Command::new(key, body)
}
/// The customer's reference as the wallet's actor seals it before `decide` (under a test key).
fn sealed(customer_ref: &str) -> SealedPersonalData {
    let key = PersonalKey::from_bytes(&[9; 32]).unwrap();
    personal::seal(&key, "acme/wallet/c-1", &PersonalData { customer_ref: customer_ref.into(), ..Default::default() })
}
fn enroll() -> Command {
    cmd(
        "enroll-1",
        CommandBody::Enroll { customer_ref: "crm-77".into(), sealed: Some(sealed("crm-77")), referrer_wallet_id: String::new() },
    )
}
fn earn(key: &str, points: i64, source: &str) -> Command {
    cmd(key, CommandBody::Earn { points, reason: "order".into(), source_ref: source.into(), order_amount: None })
}
fn redeem(key: &str, points: i64) -> Command {
    cmd(key, CommandBody::Redeem { points, reward_ref: "coffee".into() })
}
fn reverse(key: &str, source: &str, points: Option<i64>) -> Command {
    cmd(key, CommandBody::Reverse { source_ref: source.into(), points, reason: "refund".into() })
}
fn adjust(key: &str, points: i64) -> Command {
    cmd(key, CommandBody::Adjust { points, reason: "goodwill".into(), staff_ref: "staff-9".into() })
}
/// `points` from lot `lot` (no expiry policy: a wallet's points are all one lot, the first credit's).
fn from_lot(lot: u64, points: i64) -> Vec<LotPoints> {
    vec![LotPoints { lot, points }]
}
fn new_lot(lot: u64, points: i64) -> Option<LotOpened> {
    Some(LotOpened { points, expires_at_ms: 0, lot, notify_at_ms: 0, on_inactivity: false })
}
fn field(field: &'static str, reason: &str) -> Rejection {
    Rejection::InvalidField(FieldError::new(field, reason))
}

#[test]
fn enroll_opens_the_wallet() {
    let state = given(&[]).then_changes(
        enroll(),
        &[Change::Enrolled(WalletEnrolledV2 {
            tenant_id: "acme".into(),
            wallet_id: "c-1".into(),
            customer: Some(Customer::Sealed(sealed("crm-77"))),
        })],
    );
    assert_eq!((state.status, state.version, state.enrolled_at_ms), (WalletStatus::Active, 1, NOW));
    assert_eq!((state.customer_ref.as_str(), state.customer_sealed.is_empty()), ("", false), "only sealed");
}

#[test]
fn a_customer_reference_left_unsealed_is_refused_never_recorded() {
    given(&[]).then_rejects(cmd("enroll-1", CommandBody::enroll("crm-77")), Rejection::PersonalDataNotSealed);
    // Checked after everything else: an invalid reference is refused as such, before any key is made.
    given(&[]).then_rejects(cmd("enroll-1", CommandBody::enroll("a\nb")), field("customer_ref", "must not contain control characters"));
    // Retried once the customer was erased: there is no key to seal it with.
    let erase = cmd("x-1", CommandBody::EraseCustomer { reason: "ticket 7".into() });
    given(&[enroll(), erase]).then_rejects(cmd("enroll-1", CommandBody::enroll("crm-77")), Rejection::CustomerAlreadyErased);
    // Nothing to seal: nothing personal is recorded.
    let state = given(&[cmd("enroll-1", CommandBody::enroll(""))]).state;
    assert!(state.customer_sealed.is_empty() && state.customer_ref.is_empty());
}

#[test]
fn an_erasure_is_recorded_once_for_an_enrolled_wallet_open_or_closed() {
    let erase = |key: &str| cmd(key, CommandBody::EraseCustomer { reason: "ticket 7".into() });
    given(&[]).then_rejects(erase("x-1"), Rejection::WalletNotFound);
    given(&[enroll()]).then_rejects(
        cmd("x-1", CommandBody::EraseCustomer { reason: String::new() }),
        field("reason", "must not be empty: say why (a ticket, the request)"),
    );
    let state = given(&[enroll()])
        .then_changes(erase("x-1"), &[Change::CustomerErased(CustomerErased { reason: "ticket 7".into(), log_holds_clear_data: false })]);
    assert!(state.customer_erased && state.customer_sealed.is_empty());
    given(&[enroll(), erase("x-1")]).then_rejects(erase("x-2"), Rejection::CustomerAlreadyErased);
    let closed = given(&[enroll(), cmd("close", CommandBody::Close { reason: "moved".into() })])
        .then_changes(erase("x-1"), &[Change::CustomerErased(CustomerErased { reason: "ticket 7".into(), log_holds_clear_data: false })]);
    assert_eq!((closed.status, closed.customer_erased), (WalletStatus::Closed, true));
}

#[test]
fn enroll_twice_with_another_key_is_already_enrolled() {
    given(&[enroll()]).then_rejects(cmd("enroll-2", CommandBody::enroll("crm-77")), Rejection::AlreadyEnrolled);
}

#[test]
fn earn_credits_points_and_remembers_the_source() {
    let money = Money { amount_minor: 12_345, currency: "EUR".into() };
    let command = cmd(
        "o-1",
        CommandBody::Earn { points: 120, reason: "order".into(), source_ref: "order-1".into(), order_amount: Some(money.clone()) },
    );
    let state = given(&[enroll()]).then_changes(
        command,
        &[Change::Earned(PointsEarned {
            inactivity_expires_at_ms: 0,
            points: 120,
            reason: "order".into(),
            source_ref: "order-1".into(),
            order_amount: Some(money),
            order: None,
            lot: new_lot(2, 120),
            pending: None,
            // January 2026: months since January 1970.
            qualifying_month: 672,
            // The default refund window: a year.
            refundable_until_ms: NOW + 365 * 86_400_000,
            referral_converts_at_ms: 0,
        })],
    );
    assert_eq!((state.balance, state.lifetime_earned), (120, 120));
    assert_eq!(state.source("order-1").unwrap().reversible(), 120);
}

#[test]
fn commands_on_a_wallet_that_does_not_exist_are_not_found() {
    given(&[]).then_rejects(earn("o-1", 10, "order-1"), Rejection::WalletNotFound);
    given(&[]).then_rejects(redeem("r-1", 10), Rejection::WalletNotFound);
}

#[test]
fn amounts_must_be_positive_and_in_range() {
    given(&[enroll()]).then_rejects(earn("o-1", 0, "order-1"), Rejection::NonPositivePoints { field: "points", points: 0 });
    given(&[enroll()]).then_rejects(earn("o-1", -5, "order-1"), Rejection::NonPositivePoints { field: "points", points: -5 });
    given(&[enroll()]).then_rejects(redeem("r-1", -1), Rejection::NonPositivePoints { field: "points", points: -1 });
    given(&[enroll()]).then_rejects(earn("o-1", i64::MAX, "order-1"), Rejection::PointsOutOfRange { field: "points", points: i64::MAX });
    given(&[enroll()]).then_rejects(adjust("a-1", 0), Rejection::ZeroAdjustment);
    given(&[enroll()]).then_rejects(adjust("a-1", i64::MIN), Rejection::PointsOutOfRange { field: "points", points: i64::MIN });
}

#[test]
fn fields_are_validated_by_name() {
    given(&[enroll()]).then_rejects(earn("", 10, "order-1"), field("idempotency_key", "must not be empty"));
    given(&[enroll()]).then_rejects(earn("o-1", 10, ""), field("source_ref", "must not be empty"));
    given(&[enroll()]).then_rejects(earn(&"k".repeat(129), 10, "o"), field("idempotency_key", "must be at most 128 bytes"));
    given(&[]).then_rejects(cmd("e", CommandBody::enroll("a\nb")), field("customer_ref", "must not contain control characters"));
    let bad_currency = CommandBody::Earn {
        points: 1,
        reason: String::new(),
        source_ref: "o".into(),
        order_amount: Some(Money { amount_minor: 1, currency: "eur".into() }),
    };
    given(&[enroll()]).then_rejects(cmd("o", bad_currency), field("order_amount.currency", "must be an ISO 4217 code such as EUR"));
    let long_reason = CommandBody::Close { reason: "x".repeat(257) };
    given(&[enroll()]).then_rejects(cmd("c", long_reason), field("reason", "must be at most 256 bytes"));
}

#[test]
fn redeem_spends_points() {
    let state = given(&[enroll(), earn("o-1", 100, "order-1")]).then_changes(
        redeem("r-1", 60),
        &[Change::Redeemed(PointsRedeemed {
            inactivity_expires_at_ms: 0,
            points: 60,
            reward_ref: "coffee".into(),
            redemption_id: String::new(),
            lots: from_lot(2, 60),
        })],
    );
    assert_eq!((state.balance, state.lifetime_redeemed), (40, 60));
}

#[test]
fn redeem_beyond_the_balance_is_insufficient_points() {
    given(&[enroll(), earn("o-1", 100, "order-1")])
        .then_rejects(redeem("r-1", 101), Rejection::InsufficientPoints { available: 100, requested: 101 });
}

#[test]
fn adjust_moves_points_either_way_but_never_into_debt() {
    let state = given(&[enroll()]).then_changes(
        adjust("a-1", 25),
        &[Change::Adjusted(PointsAdjusted {
            points: 25,
            reason: "goodwill".into(),
            staff_ref: "staff-9".into(),
            lot: new_lot(2, 25),
            lots: vec![],
            inactivity_expires_at_ms: 0,
        })],
    );
    assert_eq!(state.balance, 25);
    given(&[enroll(), adjust("a-1", 25)]).then_changes(
        adjust("a-2", -25),
        &[Change::Adjusted(PointsAdjusted {
            points: -25,
            reason: "goodwill".into(),
            staff_ref: "staff-9".into(),
            lot: None,
            lots: from_lot(2, 25),
            inactivity_expires_at_ms: 0,
        })],
    );
    given(&[enroll(), adjust("a-1", 25)]).then_rejects(adjust("a-2", -26), Rejection::InsufficientPoints { available: 25, requested: 26 });
}

#[test]
fn reverse_takes_back_part_then_the_rest_of_a_source() {
    let scenario = given(&[enroll(), earn("o-1", 100, "order-1")]);
    let reversed = |requested, reversed| {
        Change::Reversed(EarnReversed {
            source_ref: "order-1".into(),
            requested_points: requested,
            reversed_points: reversed,
            shortfall_points: requested - reversed,
            reason: "refund".into(),
            policy: ReturnPolicy::AllowNegative as i32,
            refund_amount_minor: 0,
            lots: from_lot(2, reversed),
            pending: vec![],
        })
    };
    let state = scenario.then_changes(reverse("ref-1", "order-1", Some(30)), &[reversed(30, 30)]);
    assert_eq!(state.balance, 70);
    let scenario = given(&[enroll(), earn("o-1", 100, "order-1"), reverse("ref-1", "order-1", Some(30))]);
    let state = scenario.then_changes(reverse("ref-2", "order-1", None), &[reversed(70, 70)]);
    assert_eq!((state.balance, state.lifetime_reversed), (0, 100));
}

#[test]
fn reverse_rejections() {
    let scenario = || given(&[enroll(), earn("o-1", 100, "order-1"), reverse("ref-1", "order-1", Some(30))]);
    scenario().then_rejects(reverse("ref-2", "order-9", None), Rejection::UnknownSource { source_ref: "order-9".into() });
    scenario().then_rejects(
        reverse("ref-2", "order-1", Some(71)),
        Rejection::ReversalExceedsEarned { source_ref: "order-1".into(), reversible: 70, requested: 71 },
    );
    let fully = given(&[enroll(), earn("o-1", 100, "order-1"), reverse("ref-1", "order-1", None)]);
    fully.then_rejects(
        reverse("ref-2", "order-1", None),
        Rejection::ReversalExceedsEarned { source_ref: "order-1".into(), reversible: 0, requested: 0 },
    );
}

#[test]
fn reversal_after_spending_goes_negative_by_default() {
    let state = given(&[enroll(), earn("o-1", 100, "order-1"), redeem("r-1", 80)]).then_changes(
        reverse("ref-1", "order-1", None),
        &[Change::Reversed(EarnReversed {
            source_ref: "order-1".into(),
            requested_points: 100,
            reversed_points: 100,
            shortfall_points: 0,
            reason: "refund".into(),
            policy: ReturnPolicy::AllowNegative as i32,
            refund_amount_minor: 0,
            // The 20 left in the lot; the other 80 become a debt.
            lots: from_lot(2, 20),
            pending: vec![],
        })],
    );
    assert_eq!((state.balance, state.debt), (-80, 80));
}

#[test]
fn reversal_after_spending_stops_at_zero_under_cap_at_zero_and_records_the_shortfall() {
    let program = ProgramSettings { return_policy: ReturnPolicy::CapAtZero, ..ProgramSettings::default() };
    let state = given_with(program, &[enroll(), earn("o-1", 100, "order-1"), redeem("r-1", 80)]).then_changes(
        reverse("ref-1", "order-1", None),
        &[Change::Reversed(EarnReversed {
            source_ref: "order-1".into(),
            requested_points: 100,
            reversed_points: 20,
            shortfall_points: 80,
            reason: "refund".into(),
            policy: ReturnPolicy::CapAtZero as i32,
            refund_amount_minor: 0,
            lots: from_lot(2, 20),
            pending: vec![],
        })],
    );
    assert_eq!(state.balance, 0);
    assert_eq!(state.source("order-1").unwrap().reversible(), 0, "the refund is settled even though points were short");
}

#[test]
fn close_forfeits_the_balance_and_refuses_everything_after() {
    let state = given(&[enroll(), earn("o-1", 40, "order-1")]).then_changes(
        cmd("close-1", CommandBody::Close { reason: "gdpr".into() }),
        &[Change::Closed(WalletClosed { reason: "gdpr".into(), forfeited_points: 40, lots: from_lot(2, 40), pending: vec![] })],
    );
    assert_eq!((state.status, state.balance), (WalletStatus::Closed, 0));
    let closed = || given(&[enroll(), earn("o-1", 40, "order-1"), cmd("close-1", CommandBody::Close { reason: "gdpr".into() })]);
    closed().then_rejects(earn("o-2", 1, "order-2"), Rejection::WalletClosed);
    closed().then_rejects(cmd("enroll-9", CommandBody::enroll("x")), Rejection::WalletClosed);
}

#[test]
fn a_retry_returns_the_first_outcome_and_changes_nothing() {
    let scenario = given(&[enroll(), earn("o-1", 100, "order-1"), redeem("r-1", 30)]);
    let first = *scenario.state.receipt("o-1").unwrap();
    assert_eq!((first.first_version, first.last_version, first.balance_after), (2, 2, 100));
    assert_eq!(scenario.decide(&earn("o-1", 100, "order-1")), Ok(Decision::AlreadyApplied(first)));
    // Even a command that would now be refused returns its first outcome on retry.
    let closed = given(&[enroll(), cmd("close-1", CommandBody::Close { reason: String::new() })]);
    assert!(matches!(closed.decide(&cmd("close-1", CommandBody::Close { reason: String::new() })), Ok(Decision::AlreadyApplied(_))));
}

#[test]
fn the_same_key_with_another_payload_is_a_conflict() {
    given(&[enroll(), earn("o-1", 100, "order-1")])
        .then_rejects(earn("o-1", 101, "order-1"), Rejection::IdempotencyKeyReused { key: "o-1".into() });
    given(&[enroll(), earn("o-1", 100, "order-1")]).then_rejects(redeem("o-1", 100), Rejection::IdempotencyKeyReused { key: "o-1".into() });
}

#[test]
fn fingerprints_tell_every_field_apart() {
    let base = earn("k", 10, "order-1");
    let variants = [
        earn("k", 11, "order-1"),
        earn("k", 10, "order-2"),
        cmd("k", CommandBody::Earn { points: 10, reason: "other".into(), source_ref: "order-1".into(), order_amount: None }),
        cmd(
            "k",
            CommandBody::Earn {
                points: 10,
                reason: "order".into(),
                source_ref: "order-1".into(),
                order_amount: Some(Money { amount_minor: 0, currency: "EUR".into() }),
            },
        ),
        redeem("k", 10),
        adjust("k", 10),
    ];
    for variant in &variants {
        assert_ne!(base.fingerprint(), variant.fingerprint(), "{variant:?}");
    }
    for variant in &variants {
        assert_ne!(base.legacy_fingerprint(), variant.legacy_fingerprint(), "{variant:?}");
    }
    assert_eq!(base.fingerprint(), earn("other-key", 10, "order-1").fingerprint(), "the key is not part of the payload");
}

/// `CommandFingerprint::Blake3` from its hex digits.
fn digest(hex: &str) -> CommandFingerprint {
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    CommandFingerprint::Blake3(bytes.try_into().unwrap())
}

/// What a build before the digest recorded for `earn(_, 10, "order-1")`: FNV-1a 64 of its layout.
const EARN_10_ORDER_1_FNV64: u64 = 0x5cec_17bc_9ba8_566d;

#[test]
fn fingerprint_layouts_never_change() {
    // Golden values: fingerprints are persisted, so the layout (and the hash over it) must never change.
    // The digests were computed outside this code: the layout written out by hand, hashed with `b3sum
    // --length 16`.
    let base = earn("k", 10, "order-1");
    assert_eq!(base.fingerprint(), digest("5dafa053687741441c954ca74a0e96d4"), "{:x?}", base.fingerprint());
    assert_eq!(base.legacy_fingerprint(), CommandFingerprint::Fnv64(EARN_10_ORDER_1_FNV64));
    let lines = vec![
        OrderLine { sku: "latte".into(), category: "drinks".into(), quantity: 1, amount_minor: 450 },
        OrderLine { sku: "bagel".into(), category: "food".into(), quantity: 2, amount_minor: 1_050 },
    ];
    let order = Order {
        order_id: "order-42".into(),
        total_minor: 2_550,
        currency: "EUR".into(),
        channel: "pos".into(),
        store: "s-1".into(),
        lines,
        placed_at_ms: Some(NOW),
    };
    let for_order = cmd("order-42", CommandBody::EarnForOrder { order });
    assert_eq!(for_order.fingerprint(), digest("f096f12f2c02e186d40d0bcaf89fa622"), "{:x?}", for_order.fingerprint());
    assert_eq!(for_order.legacy_fingerprint(), CommandFingerprint::Fnv64(0x65d7_747a_fb67_d7f3));
}

/// `events` as a build before the 128-bit digest stored them: `fnv64` in the envelope's old field, no
/// digest; read back through the codec as the engine reads the log.
fn stored_before_the_digest(events: Vec<Event>, fnv64: u64) -> Vec<Event> {
    let stream = codec::wallet_stream(&TenantId::parse("acme").unwrap(), &WalletId::parse("c-1").unwrap());
    events
        .into_iter()
        .map(|event| {
            let mut data = codec::encode(&event, &EventMetadata::default());
            (data.command_fingerprint, data.command_digest) = (fnv64, None);
            codec::decode(RecordedEvent { stream_id: stream.clone(), stream_version: 1, global_position: 1, data, links: None }).unwrap()
        })
        .collect()
}

#[test]
fn a_receipt_from_before_the_digest_is_still_compared_by_its_64_bits() {
    let mut scenario = given(&[enroll()]);
    let old = earn("o-1", 10, "order-1");
    let Ok(Decision::Append(events)) = scenario.decide(&old) else { panic!("earn accepted") };
    for event in stored_before_the_digest(events, EARN_10_ORDER_1_FNV64) {
        assert_eq!(event.command_fingerprint, CommandFingerprint::Fnv64(EARN_10_ORDER_1_FNV64));
        apply(&mut scenario.state, &event);
    }
    let receipt = *scenario.state.receipt("o-1").unwrap();
    assert_eq!(receipt.command_fingerprint, CommandFingerprint::Fnv64(EARN_10_ORDER_1_FNV64));
    // The old command's retry keeps its first answer; another payload under its key is still refused.
    assert_eq!(scenario.decide(&old), Ok(Decision::AlreadyApplied(receipt)));
    assert_eq!(scenario.decide(&earn("o-1", 11, "order-1")), Err(Rejection::IdempotencyKeyReused { key: "o-1".into() }));
    // A new command on the same wallet records the digest, and the old receipt keeps answering.
    let next = adjust("a-1", 5);
    let Ok(Decision::Append(events)) = scenario.decide(&next) else { panic!("adjust accepted") };
    events.iter().for_each(|e| apply(&mut scenario.state, e));
    assert!(matches!(scenario.state.receipt("a-1").unwrap().command_fingerprint, CommandFingerprint::Blake3(_)));
    assert_eq!(scenario.state.receipt("a-1").unwrap().command_fingerprint, next.fingerprint());
    assert_eq!(scenario.decide(&old), Ok(Decision::AlreadyApplied(receipt)));
}

#[test]
fn a_new_receipt_is_compared_by_all_128_bits_of_its_digest() {
    let command = earn("o-1", 10, "order-1");
    let scenario = given(&[enroll(), command.clone()]);
    let receipt = *scenario.state.receipt("o-1").unwrap();
    assert_eq!(receipt.command_fingerprint, command.fingerprint(), "new events record the digest");
    assert_eq!(scenario.decide(&command), Ok(Decision::AlreadyApplied(receipt)));
    let CommandFingerprint::Blake3(digest) = command.fingerprint() else { panic!("a digest") };
    // Two payloads whose digests agree in 64 bits cannot be found cheaply, so the log is forged instead:
    // the earn's events recorded a digest that differs from the retry's in one half only (bytes 0..8 or
    // 8..16). With the retry's true FNV-1a in the old field beside it: a digest, when present, is the
    // only one compared.
    for byte in [0, 7, 8, 15] {
        let mut forged = digest;
        forged[byte] ^= 0x80;
        let mut forged_log = given(&[enroll()]);
        let Ok(Decision::Append(events)) = forged_log.decide(&command) else { panic!("earn accepted") };
        let stream = codec::wallet_stream(&forged_log.tenant, &forged_log.wallet);
        for event in events {
            let mut data = codec::encode(&event, &EventMetadata::default());
            (data.command_fingerprint, data.command_digest) = (EARN_10_ORDER_1_FNV64, Some(forged));
            let event =
                codec::decode(RecordedEvent { stream_id: stream.clone(), stream_version: 1, global_position: 1, data, links: None })
                    .unwrap();
            apply(&mut forged_log.state, &event);
        }
        assert_eq!(forged_log.state.receipt("o-1").unwrap().command_fingerprint, CommandFingerprint::Blake3(forged));
        forged_log.then_rejects(command.clone(), Rejection::IdempotencyKeyReused { key: "o-1".into() });
    }
}

#[test]
fn apply_is_only_bookkeeping() {
    // An event the current rules would refuse still applies exactly as recorded: history is history.
    let mut state = WalletState::default();
    let event =
        |change| Event { idempotency_key: "k".into(), command_fingerprint: CommandFingerprint::Fnv64(1), recorded_at_ms: NOW, change };
    apply(
        &mut state,
        &event(Change::Redeemed(PointsRedeemed {
            inactivity_expires_at_ms: 0,
            points: 5,
            reward_ref: String::new(),
            lots: vec![],
            redemption_id: String::new(),
        })),
    );
    assert_eq!((state.balance, state.version), (-5, 1));
}
