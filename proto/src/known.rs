//! [`KnownHeaders`]: a plain in-memory [`MeshView`], for tests, examples
//! and anything that does not need the CRDT ledger.

use std::collections::{BTreeMap, BTreeSet};

use crate::allowance::AllowanceId;
use crate::conflict::{ConflictProof, detect, over_limit};
use crate::crypto::PublicKey;
use crate::revocation::Revoked;
use crate::transfer::SignedHeader;
use crate::validate::{MeshView, VerifiedAllowance};

/// Why a transfer header was not taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Its allowance is not held, so its signature cannot be checked.
    #[error("header for unknown allowance {0}")]
    UnknownAllowance(AllowanceId),
    /// It is not signed by the allowance's wallet key.
    #[error("header for allowance {0} is not signed by its wallet")]
    BadSignature(AllowanceId),
}

/// Headers, allowances, conflicts and revocations held in maps.
#[derive(Debug, Default, Clone)]
pub struct KnownHeaders {
    allowances: BTreeMap<AllowanceId, VerifiedAllowance>,
    headers: BTreeMap<AllowanceId, Vec<SignedHeader>>,
    conflicts: BTreeMap<AllowanceId, ConflictProof>,
    revoked: BTreeSet<Revoked>,
}

impl KnownHeaders {
    /// An empty view.
    pub fn new() -> Self {
        Self::default()
    }

    /// Caches a verified allowance.
    pub fn add_allowance(&mut self, allowance: VerifiedAllowance) {
        self.allowances.insert(allowance.allowance().id, allowance);
    }

    /// Adds a header whose allowance is cached and whose signature verifies.
    /// Returns a conflict proof if it conflicts with a header already held
    /// (the proof is also recorded), or `None`.
    pub fn add_header(
        &mut self,
        header: SignedHeader,
    ) -> Result<Option<ConflictProof>, HeaderError> {
        let allowance = self
            .allowances
            .get(&header.allowance)
            .ok_or(HeaderError::UnknownAllowance(header.allowance))?;
        if !header.verify_by(&allowance.allowance().wallet) {
            return Err(HeaderError::BadSignature(header.allowance));
        }
        let on_its_face =
            over_limit(&header, allowance.allowance()).then(|| ConflictProof::OverLimit {
                header: header.clone(),
            });
        let list = self.headers.entry(header.allowance).or_default();
        if list.contains(&header) {
            return Ok(None);
        }
        let proof = on_its_face.or_else(|| list.iter().find_map(|h| detect(&header, h)));
        list.push(header);
        if let Some(p) = &proof {
            self.conflicts
                .entry(p.allowance())
                .or_insert_with(|| p.clone());
        }
        Ok(proof)
    }

    /// Records a conflict proof (the caller has verified it).
    pub fn add_conflict(&mut self, proof: ConflictProof) {
        self.conflicts.entry(proof.allowance()).or_insert(proof);
    }

    /// Records a revocation.
    pub fn revoke(&mut self, what: Revoked) {
        self.revoked.insert(what);
    }

    /// The conflict proof held against an allowance.
    pub fn conflict(&self, allowance: &AllowanceId) -> Option<&ConflictProof> {
        self.conflicts.get(allowance)
    }
}

impl MeshView for KnownHeaders {
    fn is_revoked(&self, allowance: &AllowanceId, wallet: &PublicKey) -> bool {
        self.revoked.contains(&Revoked::Allowance(*allowance))
            || self.revoked.contains(&Revoked::Wallet(*wallet))
    }

    fn has_conflict(&self, allowance: &AllowanceId) -> bool {
        self.conflicts.contains_key(allowance)
    }

    fn headers(&self, allowance: &AllowanceId) -> Vec<SignedHeader> {
        self.headers.get(allowance).cloned().unwrap_or_default()
    }

    fn allowance(&self, id: &AllowanceId) -> Option<VerifiedAllowance> {
        self.allowances.get(id).cloned()
    }
}
