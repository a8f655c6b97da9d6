//! Stamp cards (seed 001), given/when/then: stamps come from the rules for orders or from a POS by hand;
//! a card that fills up issues its reward in the same command and a new card starts with what is left.

mod common;

use std::sync::Arc;

use common::{Wallet, order, rules};
use tally_engine::domain::program::{
    ProgramCommand, ProgramCommandBody, ProgramDecision, ProgramRejection, ProgramState, apply_program, decide_program,
};
use tally_engine::domain::{
    Change, Command, CommandBody, FieldError, ProgramSettings, Rejection, ReturnPolicy, StampCard, StampCardDefined, TenantId,
};
use tally_proto::v1::{LotOpened, StampCardCompleted, StampsAdded};

fn card(id: &str, required: i64, reward_ref: &str, reward_points: i64, active: bool) -> StampCardDefined {
    StampCardDefined {
        card_id: id.into(),
        name: id.into(),
        stamps_required: required,
        reward_ref: reward_ref.into(),
        reward_points,
        active,
    }
}

/// A coffee card of 5 stamps (a free coffee and 20 points); one stamp per coffee bought.
fn program() -> ProgramSettings {
    let json = r#"[{"id":"coffee-stamp","conditions":{"type":"category","value":"coffee"},"actions":[{"type":"stamps","card":"coffee","count":1}]}]"#;
    let cards = [("coffee".to_owned(), card("coffee", 5, "free-coffee", 20, true)), ("old".to_owned(), card("old", 3, "mug", 0, false))];
    ProgramSettings { rule_versions: rules(json), stamp_cards: Arc::new(cards.into_iter().collect()), ..ProgramSettings::default() }
}

fn coffee(id: &str) -> Command {
    order(id, 4, "coffee", None)
}
fn stamp(key: &str, card: &str, count: i64) -> Command {
    Command::new(key, CommandBody::AddStamps { card_id: card.into(), count, reason: "pos".into() })
}
fn on_card(wallet: &Wallet, id: &str) -> StampCard {
    wallet.state.stamp_cards().find(|(card, _)| *card == id).map(|(_, c)| *c).unwrap_or_default()
}

#[test]
fn the_fifth_coffee_fills_the_card_and_issues_its_reward_at_once() {
    let mut wallet = Wallet::enrolled(program());
    for i in 1..=4 {
        assert_eq!(wallet.run(coffee(&format!("o-{i}"))).unwrap().len(), 1, "just the stamp");
    }
    assert_eq!(on_card(&wallet, "coffee"), StampCard { stamps: 4, completed: 0 });
    let changes = wallet.run(coffee("o-5")).unwrap();
    let completed = StampCardCompleted {
        card_id: "coffee".into(),
        cards: 1,
        stamps_left: 0,
        reward_ref: "free-coffee".into(),
        reward_points: 20,
        lot: Some(LotOpened { points: 20, expires_at_ms: 0, lot: 7, notify_at_ms: 0, on_inactivity: false }),
    };
    assert_eq!(changes[1..], [Change::CardCompleted(completed)]);
    assert_eq!(on_card(&wallet, "coffee"), StampCard { stamps: 0, completed: 1 });
    assert_eq!((wallet.state.balance, wallet.state.lifetime_earned), (20, 20));
}

#[test]
fn a_pos_stamps_by_hand_and_many_stamps_fill_many_cards() {
    let mut wallet = Wallet::enrolled(program());
    wallet.run(coffee("o-1")).unwrap();
    let changes = wallet.run(stamp("pos-1", "coffee", 11)).unwrap();
    assert_eq!(
        changes[0],
        Change::Stamped(StampsAdded { card_id: "coffee".into(), count: 11, reason: "pos".into(), inactivity_expires_at_ms: 0 })
    );
    let [_, Change::CardCompleted(completed)] = changes.as_slice() else { panic!("{changes:?}") };
    assert_eq!((completed.cards, completed.stamps_left, completed.reward_points), (2, 2, 40));
    assert_eq!(on_card(&wallet, "coffee"), StampCard { stamps: 2, completed: 2 });
}

#[test]
fn stamps_need_a_card_in_use_and_a_sensible_count() {
    let wallet = Wallet::enrolled(program());
    assert_eq!(wallet.decide(&stamp("s", "tea", 1)), Err(Rejection::UnknownStampCard { card_id: "tea".into() }));
    assert_eq!(wallet.decide(&stamp("s", "old", 1)), Err(Rejection::StampCardInactive { card_id: "old".into() }));
    assert_eq!(wallet.decide(&stamp("s", "coffee", 0)), Err(FieldError::new("count", "must be within 1..=1000").into()));
    assert_eq!(
        wallet.decide(&stamp("s", "a b", 1)),
        Err(FieldError::new("card_id", "must be 1 to 64 bytes of A-Z a-z 0-9 - _ . :").into())
    );
}

#[test]
fn card_definitions_are_checked_field_by_field() {
    let tenant = TenantId::parse("acme").unwrap();
    let define = |card: StampCardDefined| -> Result<ProgramState, ProgramRejection> {
        let mut state = ProgramState::default();
        let create = ProgramCommandBody::Create { name: "A".into(), utc_offset_minutes: 0, return_policy: ReturnPolicy::AllowNegative };
        for (i, body) in [create, ProgramCommandBody::DefineStampCard { card }].into_iter().enumerate() {
            if let ProgramDecision::Append(events) =
                decide_program(&state, &tenant, &ProgramCommand { idempotency_key: format!("k{i}"), body }, 0)?
            {
                events.iter().for_each(|e| apply_program(&mut state, e));
            }
        }
        Ok(state)
    };
    let field = |result: Result<ProgramState, ProgramRejection>| match result {
        Err(ProgramRejection::InvalidField(FieldError { field, .. })) => field.into_owned(),
        other => panic!("{other:?}"),
    };
    assert_eq!(field(define(card("", 5, "x", 0, true))), "card.card_id");
    assert_eq!(field(define(card("c", 0, "x", 0, true))), "card.stamps_required");
    assert_eq!(field(define(card("c", 1_001, "x", 0, true))), "card.stamps_required");
    assert_eq!(field(define(card("c", 5, "x", -1, true))), "card.reward_points");
    assert_eq!(field(define(card("c", 5, "", 0, true))), "card.reward_ref");
    let state = define(card("c", 5, "", 10, true)).unwrap();
    assert_eq!(state.settings().stamp_cards["c"].reward_points, 10);
}

/// Issue 15, item 3b: a card's reward times the cards one command fills stays within the per-command
/// cap (1,000 stamps on a one-stamp card of 10^12 points once minted 10^15 points at once).
#[test]
fn the_cards_one_command_fills_credit_no_more_than_the_per_command_cap() {
    let cards = [("big".to_owned(), card("big", 1, "", tally_engine::limits::POINTS_PER_COMMAND_MAX, true))];
    let mut wallet = Wallet::enrolled(ProgramSettings { stamp_cards: Arc::new(cards.into_iter().collect()), ..ProgramSettings::default() });
    let points = 1_000 * tally_engine::limits::POINTS_PER_COMMAND_MAX;
    assert_eq!(wallet.run(stamp("s-1", "big", 1_000)), Err(Rejection::PointsOutOfRange { field: "stamps", points }));
    assert_eq!(wallet.state.balance, 0);
    wallet.run(stamp("s-2", "big", 1)).unwrap();
    assert_eq!(wallet.state.balance, tally_engine::limits::POINTS_PER_COMMAND_MAX);
}

/// Issue 15, item 3a: control characters never reach the log through a reason.
#[test]
fn a_reason_with_control_characters_is_refused() {
    let mut wallet = Wallet::enrolled(program());
    for reason in ["nul\0", "two\nlines", "esc\u{1b}[31m"] {
        let command = Command::new("s", CommandBody::AddStamps { card_id: "coffee".into(), count: 1, reason: reason.into() });
        assert_eq!(wallet.run(command), Err(FieldError::new("reason", "must not contain control characters").into()), "{reason:?}");
    }
}
