//! Credit packages (seed 002): the program defines them, a wallet buys one by its id, and the points are
//! credited as purchased — from the package's definition, not from the caller — and kept apart from
//! earnings.

mod common;

use std::sync::Arc;

use common::Wallet;
use tally_engine::domain::program::{
    ProgramCommand, ProgramCommandBody, ProgramDecision, ProgramRejection, ProgramState, apply_program, decide_program,
};
use tally_engine::domain::{Change, Command, CommandBody, Decision, FieldError, Money, ProgramSettings, Rejection, TenantId};
use tally_proto::v1::{LotOpened, PointsPurchased};

fn define(key: &str, id: &str, points: i64, active: bool) -> ProgramCommand {
    ProgramCommand {
        idempotency_key: key.into(),
        body: ProgramCommandBody::DefinePackage {
            package_id: id.into(),
            name: format!("{points} points"),
            price: Money { amount_minor: 999, currency: "EUR".into() },
            points,
            active,
        },
    }
}

/// A program with packages, as wallets see it.
fn program(commands: &[ProgramCommand]) -> Result<ProgramState, ProgramRejection> {
    let tenant = TenantId::parse("acme").unwrap();
    let mut state = ProgramState::default();
    let create = ProgramCommand {
        idempotency_key: "create".into(),
        body: ProgramCommandBody::Create {
            name: "Acme".into(),
            utc_offset_minutes: 0,
            return_policy: tally_engine::domain::ReturnPolicy::AllowNegative,
        },
    };
    for command in std::iter::once(&create).chain(commands) {
        if let ProgramDecision::Append(events) = decide_program(&state, &tenant, command, 1_000)? {
            events.iter().for_each(|e| apply_program(&mut state, e));
        }
    }
    Ok(state)
}

fn purchase(id: &str, package: &str) -> Command {
    Command::new(id, CommandBody::PurchaseCredits { purchase_id: id.into(), package_id: package.into() })
}

#[test]
fn a_purchase_credits_the_packages_points_as_purchased() {
    let state = program(&[define("d1", "p-500", 500, true), define("d2", "p-old", 100, false), define("d3", "p-500", 550, true)]).unwrap();
    assert_eq!(state.packages.len(), 2);
    assert_eq!(state.packages["p-500"].points, 550, "the latest definition applies");
    let mut wallet = Wallet::enrolled(state.settings());
    let changes = wallet.run(purchase("pay-1", "p-500")).unwrap();
    let expected = PointsPurchased {
        inactivity_expires_at_ms: 0,
        purchase_id: "pay-1".into(),
        package_id: "p-500".into(),
        points: 550,
        price: Some(Money { amount_minor: 999, currency: "EUR".into() }),
        // Prepaid value never expires.
        lot: Some(LotOpened { points: 550, expires_at_ms: 0, lot: 2, notify_at_ms: 0, on_inactivity: false }),
    };
    assert_eq!(changes, [Change::Purchased(expected)]);
    assert_eq!((wallet.state.balance, wallet.state.lifetime_purchased, wallet.state.lifetime_earned), (550, 550, 0));
    assert!(matches!(wallet.decide(&purchase("pay-1", "p-500")), Ok(Decision::AlreadyApplied(_))), "a payment credits once");
    assert_eq!(wallet.decide(&purchase("pay-2", "p-old")), Err(Rejection::PackageInactive { package_id: "p-old".into() }));
    assert_eq!(wallet.decide(&purchase("pay-3", "p-x")), Err(Rejection::UnknownPackage { package_id: "p-x".into() }));
    let keyed_otherwise = Command::new("k", CommandBody::PurchaseCredits { purchase_id: "pay-4".into(), package_id: "p-500".into() });
    assert_eq!(
        wallet.decide(&keyed_otherwise),
        Err(Rejection::InvalidField(FieldError::new("idempotency_key", "must be the purchase id: a purchase credits once")))
    );
    let no_packages = Wallet::enrolled(ProgramSettings { packages: Arc::default(), ..ProgramSettings::default() });
    assert!(matches!(no_packages.decide(&purchase("pay-5", "p-500")), Err(Rejection::UnknownPackage { .. })));
}

#[test]
fn package_definitions_are_validated_with_the_field_named() {
    let bad = |command: ProgramCommand| match program(&[command]) {
        Err(ProgramRejection::InvalidField(e)) => e.field.to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(bad(define("d", "p/1", 10, true)), "package.package_id");
    assert_eq!(bad(define("d", "p-1", 0, true)), "package.points");
    let mut free = define("d", "p-1", 10, true);
    if let ProgramCommandBody::DefinePackage { price, .. } = &mut free.body {
        price.amount_minor = 0;
    }
    assert_eq!(bad(free), "package.price.amount_minor");
}
