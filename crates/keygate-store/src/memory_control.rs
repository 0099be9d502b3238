//! `MemoryControl`: admin tokens, the audit log, idempotency records and console
//! sessions in memory, the part of `MemoryStore`'s `ControlStore` that does not
//! touch keys (`memory` delegates to it).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use keygate_keys::KeyHash;
use keygate_types::AdminTokenId;

use crate::control::{
    AdminToken, AuditEntry, ConsoleSession, IN_PROGRESS, IdempotencyClaim, IdempotencyRequest,
    IdempotentOutcome, NewAdminToken, NewAuditEntry, check_audit_entry, check_idempotency_request,
    check_new_admin_token, check_outcome, claim_of,
};
use crate::error::{Result, StoreError};

/// The control plane's state of a `MemoryStore`.
#[derive(Debug, Default)]
pub(crate) struct MemoryControl {
    state: Mutex<ControlState>,
}

#[derive(Debug, Default)]
struct ControlState {
    tokens: Vec<AdminToken>,
    audit: Vec<AuditEntry>,
    idempotency: HashMap<(String, String), Stored>,
    sessions: HashMap<KeyHash, ConsoleSession>,
}

#[derive(Debug)]
struct Stored {
    request_hash: KeyHash,
    status: u16,
    target: Option<String>,
    body: String,
    created_at: DateTime<Utc>,
}

impl MemoryControl {
    fn control(&self) -> MutexGuard<'_, ControlState> {
        // As for the main state: a poisoned lock still guards consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn slot(request: &IdempotencyRequest) -> (String, String) {
    (request.actor.as_str().to_owned(), request.key.clone())
}

impl MemoryControl {
    pub(crate) fn create_admin_token(&self, new: NewAdminToken) -> Result<AdminToken> {
        check_new_admin_token(&new)?;
        let mut control = self.control();
        if control
            .tokens
            .iter()
            .any(|t| t.token_hash == new.token_hash)
        {
            return Err(StoreError::Conflict(
                "an admin token with this hash already exists".into(),
            ));
        }
        let token = AdminToken {
            id: AdminTokenId::generate(),
            name: new.name,
            role: new.role,
            token_hash: new.token_hash,
            start: new.start,
            created_at: Utc::now(),
            revoked_at: None,
        };
        control.tokens.push(token.clone());
        Ok(token)
    }

    pub(crate) fn find_admin_token_by_hash(&self, hash: &KeyHash) -> Result<Option<AdminToken>> {
        Ok(self
            .control()
            .tokens
            .iter()
            .find(|t| &t.token_hash == hash)
            .cloned())
    }

    pub(crate) fn list_admin_tokens(&self) -> Result<Vec<AdminToken>> {
        Ok(self.control().tokens.clone())
    }

    pub(crate) fn revoke_admin_token(
        &self,
        id: &AdminTokenId,
        at: DateTime<Utc>,
    ) -> Result<AdminToken> {
        let mut control = self.control();
        let token = control
            .tokens
            .iter_mut()
            .find(|t| &t.id == id)
            .ok_or_else(|| StoreError::admin_token_not_found(id))?;
        token.revoked_at = Some(token.revoked_at.map_or(at, |t| t.min(at)));
        let token = token.clone();
        control.sessions.retain(|_, s| &s.token_id != id);
        Ok(token)
    }

    pub(crate) fn append_audit(&self, entry: NewAuditEntry) -> Result<AuditEntry> {
        check_audit_entry(&entry)?;
        let mut control = self.control();
        let seq = control.audit.last().map_or(1, |e| e.seq + 1);
        let stored = AuditEntry {
            seq,
            at: Utc::now(),
            actor: entry.actor.as_str().to_owned(),
            action: entry.action.to_owned(),
            target: entry.target,
        };
        control.audit.push(stored.clone());
        Ok(stored)
    }

    pub(crate) fn list_audit(&self, before: Option<u64>, limit: u32) -> Result<Vec<AuditEntry>> {
        Ok(self
            .control()
            .audit
            .iter()
            .rev()
            .filter(|e| before.is_none_or(|b| e.seq < b))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    pub(crate) fn claim_idempotency(
        &self,
        request: &IdempotencyRequest,
        now: DateTime<Utc>,
    ) -> Result<IdempotencyClaim> {
        check_idempotency_request(request)?;
        let mut control = self.control();
        match control.idempotency.get(&slot(request)) {
            Some(stored) => Ok(claim_of(
                &stored.request_hash,
                stored.status,
                stored.target.clone(),
                stored.body.clone(),
                request,
            )),
            None => {
                control.idempotency.insert(
                    slot(request),
                    Stored {
                        request_hash: request.request_hash,
                        status: IN_PROGRESS,
                        target: None,
                        body: String::new(),
                        created_at: now,
                    },
                );
                Ok(IdempotencyClaim::Claimed)
            }
        }
    }

    pub(crate) fn finish_idempotency(
        &self,
        request: &IdempotencyRequest,
        outcome: &IdempotentOutcome,
    ) -> Result<()> {
        check_outcome(outcome)?;
        if let Some(stored) = self.control().idempotency.get_mut(&slot(request)) {
            stored.status = outcome.status;
            stored.target = outcome.target.clone();
            stored.body = outcome.body.clone();
        }
        Ok(())
    }

    pub(crate) fn abandon_idempotency(&self, request: &IdempotencyRequest) -> Result<()> {
        let mut control = self.control();
        let key = slot(request);
        if control
            .idempotency
            .get(&key)
            .is_some_and(|s| s.status == IN_PROGRESS)
        {
            control.idempotency.remove(&key);
        }
        Ok(())
    }

    pub(crate) fn purge_idempotency(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut control = self.control();
        let was = control.idempotency.len();
        control.idempotency.retain(|_, s| s.created_at >= before);
        Ok((was - control.idempotency.len()) as u64)
    }

    pub(crate) fn create_session(&self, session: &ConsoleSession) -> Result<()> {
        self.control()
            .sessions
            .insert(session.session_hash, session.clone());
        Ok(())
    }

    pub(crate) fn find_session(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
    ) -> Result<Option<ConsoleSession>> {
        Ok(self
            .control()
            .sessions
            .get(hash)
            .filter(|s| s.expires_at > now)
            .cloned())
    }

    pub(crate) fn delete_session(&self, hash: &KeyHash) -> Result<()> {
        self.control().sessions.remove(hash);
        Ok(())
    }

    pub(crate) fn purge_sessions(&self, now: DateTime<Utc>) -> Result<u64> {
        let mut control = self.control();
        let was = control.sessions.len();
        control.sessions.retain(|_, s| s.expires_at > now);
        Ok((was - control.sessions.len()) as u64)
    }
}
