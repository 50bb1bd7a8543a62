//! The soak's network: one network namespace per instance, joined to the harness's by a veth
//! pair on a private /24, with an nftables table and the veth's root qdisc inside it for the
//! faults. Nothing outside the namespaces changes: deleting a namespace removes its veth pair,
//! rules and qdiscs. A watchdog shell deletes them (and kills what runs in them) when the
//! harness exits, however it exits.

use std::{
    net::Ipv4Addr,
    os::unix::{fs::MetadataExt, process::CommandExt},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

/// The port every instance listens on, inside its own namespace.
pub const INSTANCE_PORT: u16 = 8080;

/// One instance's namespace and link.
pub struct Link {
    pub ns: String,
    /// The namespace's end of the veth pair.
    ns_if: String,
    /// The harness's end.
    host_if: String,
    /// The harness's end: clients connect from it, the instance's PostgreSQL proxy listens
    /// on it.
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
}

pub struct Net {
    pub links: Vec<Link>,
}

/// Why network faults cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        return Some("network namespaces need root".into());
    }
    for tool in ["ip", "nft", "tc"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool} >/dev/null"))
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

fn sh(script: &str) -> anyhow::Result<()> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {script}"))?;
    if !out.status.success() {
        bail!(
            "`{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Net {
    /// Creates `n` namespaces named after this process, each with a veth pair and an empty
    /// nftables table `inet soak` with input and output chains.
    pub fn create(n: usize, scratch: &std::path::Path) -> anyhow::Result<Self> {
        let pid = std::process::id();
        // A second octet per harness process, so two soaks on one machine do not collide.
        let octet = 16 + (pid % 200) as u8;
        let links: Vec<Link> = (0..n)
            .map(|i| Link {
                ns: format!("funko-soak-{pid}-{i}"),
                ns_if: format!("fs{pid}n{i}"),
                host_if: format!("fs{pid}h{i}"),
                host_ip: Ipv4Addr::new(10, octet, i as u8 + 1, 1),
                ns_ip: Ipv4Addr::new(10, octet, i as u8 + 1, 2),
            })
            .collect();
        let net = Self { links };
        net.watchdog(scratch)?;
        for l in &net.links {
            sh(&format!(
                "ip netns add {ns} && \
                 ip link add {host_if} type veth peer name {nif} netns {ns} && \
                 ip addr add {hip}/24 dev {host_if} && ip link set {host_if} up && \
                 ip -n {ns} addr add {nip}/24 dev {nif} && ip -n {ns} link set {nif} up && \
                 ip -n {ns} link set lo up",
                ns = l.ns,
                host_if = l.host_if,
                nif = l.ns_if,
                hip = l.host_ip,
                nip = l.ns_ip,
            ))?;
            l.nft(
                "add table inet soak; \
                 add chain inet soak input { type filter hook input priority 0; policy accept; }; \
                 add chain inet soak output { type filter hook output priority 0; policy accept; }",
            )?;
        }
        Ok(net)
    }

    /// A shell that waits for this process to go, then kills what still runs in the
    /// namespaces, deletes them and their links, and removes `scratch`.
    fn watchdog(&self, scratch: &std::path::Path) -> anyhow::Result<()> {
        let names: Vec<&str> = self.links.iter().map(|l| l.ns.as_str()).collect();
        let script = format!(
            "trap '' INT TERM HUP; while kill -0 \"$1\" 2>/dev/null; do sleep 0.5; done; \
             for ns in {}; do ip netns pids $ns 2>/dev/null | xargs -r kill -9; \
             ip netns del $ns 2>/dev/null; done; sleep 1; \
             for link in {}; do ip link del $link 2>/dev/null; done; rm -rf \"$2\"",
            names.join(" "),
            self.links
                .iter()
                .map(|l| l.host_if.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("watchdog")
            .arg(std::process::id().to_string())
            .arg(scratch)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the namespace watchdog")?;
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for l in &self.links {
            let _ = sh(&format!(
                "ip netns pids {ns} | xargs -r kill -9; ip netns del {ns}; \
                 ip link del {link} 2>/dev/null; true",
                ns = l.ns,
                link = l.host_if
            ));
        }
    }
}

impl Link {
    fn nft(&self, rules: &str) -> anyhow::Result<()> {
        sh(&format!("ip netns exec {} nft '{rules}'", self.ns))
    }

    /// Drops every packet between the instance and its clients.
    pub fn blackhole_clients(&self) -> anyhow::Result<()> {
        self.nft(&format!(
            "add rule inet soak input tcp dport {INSTANCE_PORT} drop; \
             add rule inet soak output tcp sport {INSTANCE_PORT} drop"
        ))
    }

    /// Drops every packet between the instance and PostgreSQL (its proxy at `pg_port`).
    pub fn blackhole_postgres(&self, pg_port: u16) -> anyhow::Result<()> {
        self.nft(&format!(
            "add rule inet soak input ip saddr {ip} tcp sport {pg_port} drop; \
             add rule inet soak output ip daddr {ip} tcp dport {pg_port} drop",
            ip = self.host_ip
        ))
    }

    /// Removes every drop rule.
    pub fn heal(&self) -> anyhow::Result<()> {
        self.nft("flush chain inet soak input; flush chain inet soak output")
    }

    /// Caps what the instance sends (to its clients and to PostgreSQL) with a token bucket.
    pub fn cap(&self, kbit: u32) -> anyhow::Result<()> {
        sh(&format!(
            "ip netns exec {} tc qdisc replace dev {} root tbf rate {kbit}kbit burst 8kb latency 2s",
            self.ns, self.ns_if
        ))
    }

    pub fn uncap(&self) -> anyhow::Result<()> {
        sh(&format!(
            "ip netns exec {} tc qdisc del dev {} root",
            self.ns, self.ns_if
        ))
    }
}
