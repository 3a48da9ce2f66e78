//! Pylon's shared HTTP cache, without sockets: the RFC 9111 policy for a shared cache
//! ([`policy`]), Cache-Control parsing ([`directives`]), keys and Vary ([`key`]),
//! stored responses ([`entry`]), the zone store with purges ([`store`]), collapsed
//! streaming fills ([`fill`]) and answers from stored responses ([`serve`]). The engine
//! (`pylon-proxy`'s cache filter) feeds it requests, heads and body chunks.

pub mod directives;
pub mod disk;
pub mod entry;
pub mod fill;
pub mod key;
pub mod policy;
pub mod serve;
pub mod store;

pub use directives::Directives;
pub use disk::DiskStore;
pub use entry::{Entry, Head};
pub use fill::{
    FillFailed, FillFrame, FillReader, FillSlot, FillWriter, Fills, HeadOutcome, Joined,
};
pub use key::{Key, KeySpec};
pub use policy::{Freshness, NotStorable, Options, Reuse};
pub use store::{Zone, ZoneConfig, ZoneStats};
