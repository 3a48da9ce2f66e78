//! Fleet mode: many Pylon instances sharing one configuration on etcd. `etcd.rs` talks
//! to etcd; `config_source.rs` reads the configuration from it at start (or from the
//! local cache when etcd is down), applies each new revision with the same hot reload
//! as SIGHUP, and writes it (`pylon config push`); `membership.rs` registers the
//! instance under a lease and follows the fleet's other members; `sections.rs` joins a
//! configuration kept as several sections; `tickets.rs` shares TLS ticket keys.

pub mod config_source;
pub mod etcd;
pub mod membership;
pub mod sections;
pub mod tickets;
