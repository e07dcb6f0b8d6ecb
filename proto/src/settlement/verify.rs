//! The signatures of a batch of receipts: the payer's over each header and
//! the payee's acknowledgement of each transfer id, checked in one batch
//! equation, with a one-by-one fallback that names the bad receipts.

use std::collections::BTreeMap;

use super::{AllowanceState, SettlementError, SignatureCheck};
use crate::allowance::AllowanceId;
use crate::crypto::{KeyBytes, PublicKey, Signature, domain, signing_message, verify_batch_parts};
use crate::transfer::{Receipt, verify_ack};
use crate::validate::check_payer_signature;

/// For each receipt `receipts[i]`, `i` in `candidates` (whose allowance is
/// in `states`), the payee's key if both signatures verify, or why not.
pub(super) fn signatures(
    states: &BTreeMap<AllowanceId, AllowanceState>,
    receipts: &[Receipt],
    candidates: &[usize],
    mode: SignatureCheck,
) -> Vec<Result<PublicKey, SettlementError>> {
    // Payees are few (shops) next to payments: decompress each key once.
    let mut payees: BTreeMap<KeyBytes, Option<PublicKey>> = BTreeMap::new();
    let mut results: Vec<Result<PublicKey, SettlementError>> = candidates
        .iter()
        .map(|&i| {
            let bytes = receipts[i].transfer.body().payee;
            let key = *payees
                .entry(bytes)
                .or_insert_with(|| bytes.to_public_key().ok());
            key.ok_or(SettlementError::BadPayeeSignature)
        })
        .collect();
    if mode == SignatureCheck::Batch && batch_holds(states, receipts, candidates, &results) {
        return results;
    }
    for (&i, result) in candidates.iter().zip(&mut results) {
        if let Ok(payee) = result {
            *result = strict(states, &receipts[i], payee).map(|()| *payee);
        }
    }
    results
}

/// Both signatures of one receipt, strictly (the payee's offline check).
fn strict(
    states: &BTreeMap<AllowanceId, AllowanceState>,
    receipt: &Receipt,
    payee: &PublicKey,
) -> Result<(), SettlementError> {
    let allowance = receipt.transfer.header().allowance;
    let state = states
        .get(&allowance)
        .ok_or(SettlementError::UnknownAllowance(allowance))?;
    check_payer_signature(&receipt.transfer, state.allowance()).map_err(SettlementError::Check)?;
    if !verify_ack(payee, &receipt.transfer.id(), &receipt.payee_signature) {
        return Err(SettlementError::BadPayeeSignature);
    }
    Ok(())
}

/// Whether one batch equation holds over the two signatures of every
/// candidate whose payee key is valid.
fn batch_holds(
    states: &BTreeMap<AllowanceId, AllowanceState>,
    receipts: &[Receipt],
    candidates: &[usize],
    payees: &[Result<PublicKey, SettlementError>],
) -> bool {
    let mut messages: Vec<Vec<u8>> = Vec::with_capacity(2 * candidates.len());
    let mut signatures: Vec<&Signature> = Vec::with_capacity(2 * candidates.len());
    let mut keys: Vec<PublicKey> = Vec::with_capacity(2 * candidates.len());
    for (&i, payee) in candidates.iter().zip(payees) {
        let Ok(payee) = payee else { continue };
        let transfer = &receipts[i].transfer;
        let Some(state) = states.get(&transfer.header().allowance) else {
            return false;
        };
        let header = transfer.signed_header();
        messages.push(header.signing_message());
        signatures.push(transfer.payer_signature());
        keys.push(state.allowance().wallet);
        messages.push(signing_message(
            domain::RECEIPT_ACK,
            transfer.id().as_bytes(),
        ));
        signatures.push(&receipts[i].payee_signature);
        keys.push(*payee);
    }
    let slices: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    verify_batch_parts(&slices, signatures.into_iter(), keys.into_iter())
}
