//! The meshpay simulator.
//!
//! Empty until the simulator issue lands; see `docs/` and the open issues.
