//! A DNS server on 127.0.0.1:0 (UDP) whose answers a test sets and changes: A/AAAA and
//! SRV records, a TTL, and a failing mode (SERVFAIL) to test what a proxy does when its
//! resolver breaks.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

#[derive(Default)]
struct Zone {
    /// Lower-case fully qualified name → addresses.
    ips: HashMap<String, Vec<IpAddr>>,
    /// Lower-case fully qualified name → (priority, weight, port, target).
    srv: HashMap<String, Vec<(u16, u16, u16, String)>>,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    failing: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn fqdn(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    if n.ends_with('.') { n } else { format!("{n}.") }
}

/// Every answer's TTL, in seconds.
const TTL: u32 = 1;

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let failing = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let (z, f, q) = (
            Arc::clone(&zone),
            Arc::clone(&failing),
            Arc::clone(&queries),
        );
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let answer = answer(&query, &z.lock().unwrap(), f.load(Ordering::SeqCst));
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        DnsServer {
            addr,
            zone,
            failing,
            queries,
            task,
        }
    }

    /// Sets the addresses of `name` (A for IPv4, AAAA for IPv6); empty removes it.
    pub fn set_ips(&self, name: &str, ips: &[IpAddr]) {
        self.zone
            .lock()
            .unwrap()
            .ips
            .insert(fqdn(name), ips.to_vec());
    }

    /// Sets the SRV records of `name`: (priority, weight, port, target).
    pub fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)]) {
        let records = records
            .iter()
            .map(|&(p, w, port, t)| (p, w, port, fqdn(t)))
            .collect();
        self.zone.lock().unwrap().srv.insert(fqdn(name), records);
    }

    /// While failing, every query gets SERVFAIL.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

fn answer(query: &Message, zone: &Zone, failing: bool) -> Message {
    let id = query.metadata.id;
    let op = query.metadata.op_code;
    if failing {
        return Message::error_msg(id, op, ResponseCode::ServFail);
    }
    let mut m = Message::response(id, op);
    m.metadata.message_type = MessageType::Response;
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.authoritative = true;
    let mut found = false;
    for q in &query.queries {
        m.add_query(q.clone());
        let name = q.name.to_ascii().to_ascii_lowercase();
        if zone.ips.contains_key(&name) || zone.srv.contains_key(&name) {
            found = true;
        }
        match q.query_type {
            RecordType::A | RecordType::AAAA => {
                for ip in zone.ips.get(&name).into_iter().flatten() {
                    let data = match (ip, q.query_type) {
                        (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                        (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                        _ => continue,
                    };
                    m.add_answer(Record::from_rdata(q.name.clone(), TTL, data));
                }
            }
            RecordType::SRV => {
                for (p, w, port, target) in zone.srv.get(&name).into_iter().flatten() {
                    let target = Name::from_ascii(target).unwrap();
                    m.add_answer(Record::from_rdata(
                        q.name.clone(),
                        TTL,
                        RData::SRV(SRV::new(*p, *w, *port, target)),
                    ));
                }
            }
            _ => {}
        }
    }
    if !found {
        m.metadata.response_code = ResponseCode::NXDomain;
    }
    m
}
