//! Property tests over random command sequences for the wallet domain.

use std::collections::HashMap;

use proptest::prelude::*;
use tally_engine::codec;
use tally_engine::domain::{
    Change, Command, CommandBody, Context, Decision, Event, ProgramSettings, ReturnPolicy, TenantId, WalletId, WalletState, WalletStatus,
    apply, decide,
};
use tally_engine::store::{EventMetadata, RecordedEvent, StreamId};

fn body() -> impl Strategy<Value = CommandBody> {
    let source = (0..4u8).prop_map(|s| format!("order-{s}"));
    prop_oneof![
        1 => Just(CommandBody::Enroll { customer_ref: "crm-1".into() }),
        6 => (1..500i64, source.clone()).prop_map(|(points, source_ref)| CommandBody::Earn {
            points,
            reason: "order".into(),
            source_ref,
            order_amount: None
        }),
        4 => (1..400i64).prop_map(|points| CommandBody::Redeem { points, reward_ref: "reward".into() }),
        2 => (-300..300i64).prop_map(|points| CommandBody::Adjust { points, reason: "fix".into(), staff_ref: "staff".into() }),
        4 => (source, proptest::option::of(1..300i64)).prop_map(|(source_ref, points)| CommandBody::Reverse {
            source_ref,
            points,
            reason: "refund".into()
        }),
        1 => Just(CommandBody::Close { reason: "bye".into() }),
    ]
}

/// Keys come from a small pool so that retries (same key, same body) and reuse (same key, other body)
/// both happen often; a step may also re-send an earlier command verbatim.
fn steps() -> impl Strategy<Value = Vec<(Option<usize>, u8, CommandBody)>> {
    prop::collection::vec((proptest::option::weighted(0.15, 0..64usize), 0..40u8, body()), 1..80)
}

fn policy() -> impl Strategy<Value = ReturnPolicy> {
    prop_oneof![Just(ReturnPolicy::AllowNegative), Just(ReturnPolicy::CapAtZero)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_every_invariant(steps in steps(), policy in policy()) {
        let tenant = TenantId::parse("t").unwrap();
        let wallet = WalletId::parse("w").unwrap();
        let program = ProgramSettings { return_policy: policy, ..ProgramSettings::default() };
        let mut state = WalletState::default();
        let mut log: Vec<Event> = Vec::new();
        let mut accepted: Vec<(Command, WalletState)> = Vec::new();
        let enrolled_first = Command::new("enroll", CommandBody::Enroll { customer_ref: "crm-1".into() });
        let mut sent = vec![enrolled_first];
        for (resend, key, body) in steps {
            let command = match resend {
                Some(i) if !accepted.is_empty() => accepted[i % accepted.len()].0.clone(),
                _ => Command::new(format!("k{key}"), body),
            };
            sent.push(command);
        }
        for (step, command) in sent.iter().enumerate() {
            let ctx = Context { tenant: &tenant, wallet: &wallet, now_ms: 1_000 + step as i64, program: &program };
            match decide(&state, command, &ctx) {
                Ok(Decision::Append(events)) => {
                    for event in &events {
                        apply(&mut state, event);
                        prop_assert!(policy != ReturnPolicy::CapAtZero || state.balance >= 0, "cap-at-zero went negative: {state:?}");
                        if let Change::Reversed(r) = &event.change {
                            prop_assert_eq!(r.requested_points, r.reversed_points + r.shortfall_points);
                            prop_assert!(policy != ReturnPolicy::AllowNegative || r.shortfall_points == 0);
                        }
                    }
                    log.extend(events);
                    accepted.push((command.clone(), state.clone()));
                    // An immediate retry returns the outcome just recorded and changes nothing.
                    let retry = decide(&state, command, &ctx);
                    let Ok(Decision::AlreadyApplied(receipt)) = retry else { panic!("retry of {command:?} gave {retry:?}") };
                    prop_assert_eq!(receipt.balance_after, state.balance);
                    prop_assert_eq!(receipt.last_version, state.version);
                }
                Ok(Decision::AlreadyApplied(receipt)) => {
                    // A later retry returns the first outcome, not the current balance.
                    let (_, after) = accepted.iter().find(|(c, _)| c == command).expect("only accepted commands are replayed");
                    prop_assert_eq!(receipt.balance_after, after.balance);
                    prop_assert_eq!(receipt.last_version, after.version);
                }
                Err(_) => {}
            }
        }

        // The balance is the sum of the recorded movements.
        prop_assert_eq!(state.balance, log.iter().map(|e| e.change.points_delta()).sum::<i64>());
        // No source ever gives back more than it earned.
        let mut per_source: HashMap<&str, (i64, i64)> = HashMap::new();
        for event in &log {
            match &event.change {
                Change::Earned(e) => per_source.entry(&e.source_ref).or_default().0 += e.points,
                Change::Reversed(r) => per_source.entry(&r.source_ref).or_default().1 += r.requested_points,
                _ => {}
            }
        }
        for (source, (earned, reversed)) in per_source {
            prop_assert!(reversed <= earned, "{source}: reversed {reversed} of {earned}");
        }
        if state.status == WalletStatus::Closed {
            prop_assert!(matches!(log.last().map(|e| &e.change), Some(Change::Closed(_))), "nothing after close");
        }

        // Replaying the persisted form from scratch gives the same state as live handling.
        let stream = StreamId::new("t/wallet/w").unwrap();
        let mut replayed = WalletState::default();
        for (i, event) in log.iter().enumerate() {
            let recorded = RecordedEvent {
                stream_id: stream.clone(),
                stream_version: i as u64 + 1,
                global_position: i as u64 + 1,
                data: codec::encode(event, &EventMetadata::default()),
            };
            let decoded = codec::decode(recorded).unwrap();
            prop_assert_eq!(&decoded, event);
            apply(&mut replayed, &decoded);
        }
        prop_assert_eq!(replayed, state);
    }
}
