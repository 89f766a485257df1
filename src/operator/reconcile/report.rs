//! What the world is told: the status patch (only when it changed), Events, and the log and
//! metrics of refusals.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use serde_json::json;
use tracing::{debug, info, warn};

use super::{Context, Error, Refusal, status};
use crate::core::consent::FanOut;
use crate::core::crd::{FIELD_MANAGER, SetRef, SigningKeySet, SigningKeySetStatus};
use crate::core::plan::{Settings, Transition};
use crate::core::state::SetState;

/// Patches the status (server-side apply) unless it is what the set already has.
pub async fn write_status(
    set: &SetRef,
    sks: &SigningKeySet,
    ctx: &Context,
    status: SigningKeySetStatus,
) -> Result<(), Error> {
    // Every outcome ends here, written or not: the condition gauges follow the status.
    ctx.metrics
        .observe_conditions(&set.namespace, &set.name, &status.conditions);
    if sks.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<SigningKeySet> = Api::namespaced(ctx.client.clone(), &set.namespace);
    let patch = json!({
        "apiVersion": "keyturn.dev/v1alpha1",
        "kind": "SigningKeySet",
        "status": status,
    });
    let stored = api
        .patch_status(
            &set.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.memory.written.wrote(set, sks, &status);
    ctx.memory.echoes.wrote(&stored);
    crate::operator::fault::wrote();
    ctx.metrics.write("status");
    Ok(())
}

/// Reports a set keyturn will not act on: `Ready=False` with the refusal's reason and
/// message, a Warning Event and a log line when that changed, and a retry as the reason
/// says. Nothing is reported for a set that is going away.
pub async fn refuse(
    set: &SetRef,
    sks: &SigningKeySet,
    ctx: &Context,
    refusal: Refusal,
    at: Option<(&SetState, &Settings)>,
) -> Result<Action, Error> {
    if ctx.going_away(set, sks) {
        debug!(
            reason = refusal.reason.as_str(),
            "not reporting: the set is going away"
        );
        return Ok(Action::await_change());
    }
    let reason = refusal.reason.as_str();
    let already = sks.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Ready"
                && c.status == "False"
                && c.reason == reason
                && c.message == refusal.message
        })
    });
    if !already {
        warn!(reason, message = %refusal.message, "not ready");
        publish_event(
            sks,
            ctx,
            EventType::Warning,
            reason,
            "Reconcile",
            &refusal.message,
        )
        .await;
    }
    ctx.metrics.refused(reason);
    if let Some((state, settings)) = at {
        // A refusal that holds a step back reports when it was due: it passes into the past
        // and KeyturnRotationOverdue fires. (Without a state the last value stays, and passes
        // just the same.)
        ctx.metrics.observe_set(
            &set.namespace,
            &set.name,
            state,
            crate::core::plan::due_transition(state, settings),
        );
    }
    let st = status::refused_status(set, sks, &refusal, at, (ctx.clock)());
    write_status(set, sks, ctx, st).await?;
    Ok(match refusal.reason.retry() {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// A Warning Event when the `FanOut` condition turns False or its message changes.
pub async fn fan_out_changed(
    sks: &SigningKeySet,
    ctx: &Context,
    current: &Condition,
    spread: &FanOut,
) {
    if newly_false(sks, current) {
        warn!(reason = %current.reason, denied = ?spread.denied, "fan-out refused");
        publish_event(
            sks,
            ctx,
            EventType::Warning,
            &current.reason,
            "Publish",
            &current.message,
        )
        .await;
    }
}

/// True when `current` is False and the set's status did not already say so.
fn newly_false(sks: &SigningKeySet, current: &Condition) -> bool {
    let before = sks
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == current.type_));
    current.status == "False"
        && before.is_none_or(|c| c.status != current.status || c.message != current.message)
}

/// A Warning Event and a log line when the set's discovery document stops being served.
pub async fn discovery_changed(sks: &SigningKeySet, ctx: &Context, current: &Condition) {
    if newly_false(sks, current) {
        warn!(reason = %current.reason, "discovery not served");
        publish_event(
            sks,
            ctx,
            EventType::Warning,
            &current.reason,
            "Discovery",
            &current.message,
        )
        .await;
    }
}

/// The log lines, metrics and Events of the transitions one state write recorded. A key
/// published and activated in the same write (a set's first key, a revocation's
/// replacement) gets one Event, `KeyActivated`, saying both; the log and the
/// `keyturn_transitions_total` counter still have each transition.
pub async fn announce(sks: &SigningKeySet, ctx: &Context, transitions: &[Transition]) {
    for t in transitions {
        let (type_, reason, mut note) = describe(t);
        info!(reason, "{note}");
        ctx.metrics.transition(reason);
        match t {
            Transition::Published(k) if transitions.contains(&Transition::Activated(k.clone())) => {
                continue;
            }
            Transition::Activated(k) if transitions.contains(&Transition::Published(k.clone())) => {
                note = format!("key {k} published in the JWKS and is now the signing key");
            }
            _ => {}
        }
        publish_event(sks, ctx, type_, reason, "Rotate", &note).await;
    }
}

/// The Event type, reason and note of one transition.
fn describe(t: &Transition) -> (EventType, &'static str, String) {
    match t {
        Transition::Published(k) => (
            EventType::Normal,
            "KeyPublished",
            format!("key {k} published in the JWKS"),
        ),
        Transition::Activated(k) => (
            EventType::Normal,
            "KeyActivated",
            format!("key {k} is now the signing key"),
        ),
        Transition::Retired(k) => (
            EventType::Normal,
            "KeyRetired",
            format!("key {k} stopped signing; it stays in the JWKS for the overlap window"),
        ),
        Transition::Removed(k) => (
            EventType::Normal,
            "KeyRemoved",
            format!(
                "key {k} left the JWKS: its overlap window (or, for a verification-only key, its time) ended"
            ),
        ),
        Transition::Revoked {
            kid,
            was_active: true,
        } => (
            EventType::Warning,
            "ActiveKeyRevoked",
            format!(
                "key {kid} was revoked while signing; a replacement signs now and verifiers with stale caches will reject its tokens until they refresh"
            ),
        ),
        Transition::Revoked {
            kid,
            was_active: false,
        } => (
            EventType::Warning,
            "KeyRevoked",
            format!("key {kid} was revoked and left the JWKS"),
        ),
    }
}

/// An Event's note holds at most 1024 characters (the API server refuses the Event
/// otherwise); a longer one is cut, the condition keeps the whole message.
fn event_note(note: &str) -> String {
    const MAX: usize = 1024;
    if note.chars().count() <= MAX {
        return note.to_string();
    }
    let mut cut: String = note.chars().take(MAX - 1).collect();
    cut.push('…');
    cut
}

async fn publish_event(
    sks: &SigningKeySet,
    ctx: &Context,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(event_note(note)),
        action: action.into(),
        secondary: None,
    };
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&ev, &sks.object_ref(&())).await {
        warn!(error = %e, "could not record Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_fit_the_api_limit() {
        assert_eq!(event_note("short"), "short");
        let long = "é".repeat(3000);
        let cut = event_note(&long);
        assert_eq!(cut.chars().count(), 1024);
        assert!(cut.ends_with('…'));
        assert_eq!(event_note(&"x".repeat(1024)), "x".repeat(1024));
    }
}
