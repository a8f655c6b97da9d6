//! A referral's reward (ADR 0016): the referee's order that converted the referral recorded
//! `ReferralConverted` in the referee's wallet; this flow, `<tenant>/flow/referral/<referee>`, gives the
//! referrer its reward — `RewardReferral` in the referrer's wallet, keyed by the referee
//! ([`crate::domain::referral_reward_key`]), answered the same every time — or learns that the referrer
//! is closed, and ends REFUSED (the referee's side stands). It is started by the call that converted
//! ([`Flows::follow`], before it answers) and, should that call die first, by the reader of this node,
//! which notes every conversion whose flow has not started (`reader.rs`).

use std::time::Duration;

use tally_proto::v1::{FlowEnded, FlowRefusal, ReferralConverted, ReferralRewardFlow};

use super::{FlowError, Flows, Inner, Until};
use crate::actors::{CommandMeta, CommandOutcome, WalletError, WalletKey};
use crate::codec;
use crate::domain::flows::{self, DebitAnswer, FlowState};
use crate::domain::{Change, Command, Rejection, TenantId, WalletId};
use crate::store::StoreError;

/// The points between two steps of a referral's reward, in order: after its start is recorded, after the
/// referrer's answer, after its end is recorded.
pub const REFERRAL_CRASH_POINTS: [&str; 3] = ["referral_started", "rewarded", "referral_ended"];

impl Flows {
    /// Whether a wallet's outcome calls for a flow ([`Self::follow`] would start one).
    pub fn calls_for(outcome: &CommandOutcome) -> bool {
        outcome.events.iter().any(|stored| matches!(&stored.event.change, Change::ReferralConverted(c) if c.referrer_points > 0))
    }

    /// Starts the flows a wallet's outcome calls for (a referral its order converted) and drives them
    /// to their ends, for at most `within`. What cannot be done by then is left to the reader and the
    /// resumer, which find it in the log (every step answers the same however often it is done): the
    /// outcome itself stands, so this never fails its caller.
    pub async fn follow(&self, key: &WalletKey, outcome: &CommandOutcome, meta: &CommandMeta, within: Duration) {
        for stored in &outcome.events {
            if let Change::ReferralConverted(converted) = &stored.event.change {
                let reward = self.reward_referral(&key.tenant, &key.wallet, converted, meta.clone());
                let error = match tokio::time::timeout(within, reward).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("not done within {within:?}"),
                };
                tracing::warn!(wallet = %key.wallet, %error, "a referral's reward could not finish yet; it is resumed in the background");
            }
        }
    }

    /// Rewards the referrer of the referral wallet `referee` converted (its `ReferralConverted`): starts
    /// the flow (or finds it) and drives it to its end; `None` when the conversion owes the referrer
    /// nothing.
    pub async fn reward_referral(
        &self,
        tenant: &TenantId,
        referee: &WalletId,
        converted: &ReferralConverted,
        meta: CommandMeta,
    ) -> Result<Option<FlowEnded>, FlowError> {
        let Some(wanted) = referral_flow(referee, converted) else { return Ok(None) };
        self.inner.reward_referral(tenant, wanted, &meta).await.map(Some)
    }
}

/// The flow a conversion by wallet `referee` calls for (`None`: it owes the referrer nothing).
pub(super) fn referral_flow(referee: &WalletId, converted: &ReferralConverted) -> Option<ReferralRewardFlow> {
    (converted.referrer_points > 0).then(|| ReferralRewardFlow {
        referee_wallet_id: referee.to_string(),
        referrer_wallet_id: converted.referrer_wallet_id.clone(),
        points: converted.referrer_points,
        order_id: converted.order_id.clone(),
    })
}

impl Inner {
    /// Starts the referral's flow (or finds it) and drives it to its end.
    pub(super) async fn reward_referral(
        &self,
        tenant: &TenantId,
        wanted: ReferralRewardFlow,
        meta: &CommandMeta,
    ) -> Result<FlowEnded, FlowError> {
        let stream = codec::flow_stream(tenant, &flows::referral_flow_id(&wanted.referee_wallet_id))?;
        let lock = self.lock_for(&stream);
        let _driving = lock.lock().await;
        let mut state = self.load(&stream).await?;
        if state.version == 0 {
            match self.record(&stream, &mut state, flows::referral_started(wanted.clone()), meta).await {
                Ok(_) => self.crash_point("referral_started")?,
                Err(FlowError::Store(StoreError::VersionConflict { .. })) => state = self.load(&stream).await?,
                Err(error) => return Err(error),
            }
        }
        self.unstarted.lock().remove(&stream);
        // One conversion per referee: the flow on its stream is this one.
        if state.referral.as_ref() != Some(&wanted) {
            return Err(FlowError::FlowIdReused { flow_id: flows::referral_flow_id(&wanted.referee_wallet_id) });
        }
        let (state, _) = self.drive(tenant, &stream, state, meta, Until::Settled).await?;
        state.ended.ok_or_else(|| FlowError::Unfinished { reason: "a flow driven to its end has not ended".into() })
    }

    /// The referral's one step, from the start: the referrer's reward (or its refusal, for good); how it
    /// ends.
    pub(super) async fn referral(
        &self,
        tenant: &TenantId,
        referral: &ReferralRewardFlow,
        state: &FlowState,
        meta: &CommandMeta,
    ) -> Result<FlowEnded, FlowError> {
        self.remembered_since(state.started_at_ms, "referral's reward")?;
        let referrer = WalletId::parse(&referral.referrer_wallet_id).map_err(|e| FlowError::Unfinished { reason: e.to_string() })?;
        let command = Command::reward_referral(&referral.referee_wallet_id, &referral.order_id, referral.points);
        let answer = match self.registry.execute(&WalletKey::new(tenant.clone(), referrer), command, meta.clone()).await {
            Ok(outcome) => {
                let rewarded = outcome.events.iter().find_map(|stored| match &stored.event.change {
                    Change::ReferralRewarded(e) if e.referee_wallet_id == referral.referee_wallet_id => Some(e.clone()),
                    _ => None,
                });
                match rewarded.ok_or_else(|| FlowError::Unfinished { reason: "the referrer's answer names no reward".into() })? {
                    e if e.refused.is_empty() => DebitAnswer::Paid { points: e.points, balance: outcome.balance },
                    e => DebitAnswer::Refused(FlowRefusal {
                        message: format!("the referrer's wallet refused the reward: {}", e.refused),
                        code: e.refused,
                    }),
                }
            }
            // For good: a closed wallet stays closed. (A referrer not found is not an answer: its code was
            // claimed by an enrolled wallet, so an actor that does not know it yet is behind the log.)
            Err(WalletError::Rejected(rejection @ Rejection::WalletClosed)) => DebitAnswer::Refused(flows::refusal(&rejection)),
            Err(error) => return Err(FlowError::Unfinished { reason: error.to_string() }),
        };
        self.crash_point("rewarded")?;
        Ok(flows::referral_ending(&answer))
    }
}
