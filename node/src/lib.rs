//! The meshpay node (storage, transports, control API, CLI).
//!
//! Empty until the node issue lands; see `docs/` and the open issues.
