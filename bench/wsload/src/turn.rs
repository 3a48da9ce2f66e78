//! TURN load for bench/turn.py: clients that each allocate, bind a channel to an echo
//! peer of this process and keep WINDOW ChannelData messages in flight through the
//! server (each message crosses the relay twice); and allocations per second (allocate,
//! then Refresh with lifetime 0, by CONC clients at once).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pylon_testkit::turn::TurnClient;
use tokio::net::UdpSocket;

use crate::Error;

const CHANNEL: u16 = 0x4000;

/// Prints `relayed_packets_per_s=N` and `lost=N`.
pub async fn relay(
    server: SocketAddr,
    user: String,
    password: String,
    clients: usize,
    size: usize,
    seconds: u64,
    window: usize,
) -> Result<(), Error> {
    let peer = UdpSocket::bind("127.0.0.1:0").await?;
    let peer_addr = peer.local_addr()?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = peer.recv_from(&mut buf).await {
            let _ = peer.try_send_to(&buf[..n], from);
        }
    });
    let mut sockets = Vec::new();
    for _ in 0..clients {
        let mut c = TurnClient::udp(server, &user, &password).await;
        if !c.allocate().await.success || !c.bind_channel(CHANNEL, peer_addr).await.success {
            return Err("allocation or channel bind failed".into());
        }
        sockets.push(c.into_udp().ok_or("not UDP")?);
    }
    let echoed = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (s, to) in sockets {
        let (echoed, sent) = (Arc::clone(&echoed), Arc::clone(&sent));
        tasks.push(tokio::spawn(async move {
            let mut msg = vec![0u8; 4 + size];
            msg[..2].copy_from_slice(&CHANNEL.to_be_bytes());
            msg[2..4].copy_from_slice(&(size as u16).to_be_bytes());
            for _ in 0..window {
                if s.send_to(&msg, to).await.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            let mut buf = vec![0u8; 65_536];
            loop {
                let left = end.saturating_duration_since(Instant::now());
                match tokio::time::timeout(
                    left.max(Duration::from_millis(1)),
                    s.recv_from(&mut buf),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        echoed.fetch_add(1, Ordering::Relaxed);
                    }
                    // A lost message: put another in flight.
                    Ok(Err(_)) | Err(_) if Instant::now() < end => {}
                    _ => return,
                }
                if Instant::now() >= end {
                    return;
                }
                if s.send_to(&msg, to).await.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let echoed = echoed.load(Ordering::Relaxed);
    println!(
        "relayed_packets_per_s={:.0} echoed={echoed} sent={} secs={secs:.2}",
        2.0 * echoed as f64 / secs,
        sent.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Prints `allocations_per_s=N`.
pub async fn allocations(
    server: SocketAddr,
    user: String,
    password: String,
    seconds: u64,
    conc: usize,
) -> Result<(), Error> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (done, user, password) = (Arc::clone(&done), user.clone(), password.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let mut c = TurnClient::udp(server, &user, &password).await;
                if c.allocate().await.success && c.refresh(0).await.success {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "allocations_per_s={:.0}",
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
}
