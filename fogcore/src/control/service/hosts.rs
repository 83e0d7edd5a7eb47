//! Hosts and groups: their checks, quick registration, and which node images a host.

use std::net::Ipv4Addr;

use super::{Control, lock, same_name};
use crate::control::api::Caller;
use crate::control::db::HostActivity;
use crate::control::model::{
    Approval, Group, Host, HostQuery, Page, Registered, Registration, canonical_mac, canonical_uuid, check_name,
    page_limit,
};
use crate::error::{Error, Result};

/// A host name from a DMI serial number, unless the serial is a placeholder firmware vendors
/// leave in (`To be filled by O.E.M.`, `0`, `Default string`): letters and digits kept, the rest
/// `-`, lower case.
pub fn name_from_serial(serial: &str) -> Option<String> {
    let lower = serial.trim().to_ascii_lowercase();
    let placeholder = lower.is_empty()
        || lower.chars().all(|c| c == '0' || c == ' ')
        || [
            "to be filled",
            "default string",
            "system serial",
            "not specified",
            "none",
            "n/a",
            "123456789",
        ]
        .iter()
        .any(|p| lower.starts_with(p));
    if placeholder {
        return None;
    }
    let name: String = lower
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-').chars().take(64).collect::<String>();
    check_name("host name", &name).ok().map(|()| name)
}

impl Control {
    /// Every host, by name.
    pub async fn hosts(&self) -> Result<Vec<Host>> {
        self.db.hosts().await
    }

    /// A page of the hosts `query` selects, by name.
    pub async fn host_page(&self, query: &HostQuery) -> Result<Page<Host>> {
        query.validate()?;
        let limit = page_limit(query.limit)?;
        let hosts = self.db.hosts_page(query, limit).await?;
        Ok(Page::of(hosts, limit, |h| h.name.clone()))
    }

    /// One host.
    pub async fn host(&self, name: &str) -> Result<Host> {
        self.db.host(name).await
    }

    /// Every group, by name.
    pub async fn groups(&self) -> Result<Vec<Group>> {
        self.db.groups().await
    }

    /// One group.
    pub async fn group(&self, name: &str) -> Result<Group> {
        self.db.group(name).await
    }

    /// Removes a group; its hosts stay, in no group.
    pub async fn delete_group(&self, name: &str) -> Result<()> {
        self.db.delete_group(name).await
    }

    /// Adds a group.
    pub async fn create_group(&self, group: &Group) -> Result<Group> {
        group.validate()?;
        self.db.create_group(group).await?;
        self.db.group(&group.name).await
    }

    /// Replaces a group's record (its description; names never change).
    pub async fn update_group(&self, name: &str, group: &Group) -> Result<Group> {
        same_name("group name", name, &group.name)?;
        group.validate()?;
        self.db.update_group(group).await?;
        self.db.group(name).await
    }

    pub(super) async fn check_host(&self, host: &mut Host) -> Result<()> {
        host.validate()?;
        if let Some(image) = &host.image {
            self.db.image(image).await?;
        }
        if let Some(group) = &host.group {
            self.db.group(group).await?;
        }
        if let Some(node) = &host.node {
            self.db.node(node).await?;
        }
        Ok(())
    }

    /// Adds a host: MACs valid and not another host's, image, group and node existing.
    pub async fn create_host(&self, mut host: Host) -> Result<Host> {
        self.check_host(&mut host).await?;
        self.db.create_host(&host).await?;
        self.db.host(&host.name).await
    }

    /// Replaces a host's record.
    pub async fn update_host(&self, name: &str, mut host: Host) -> Result<Host> {
        same_name("host name", name, &host.name)?;
        self.check_host(&mut host).await?;
        self.db.update_host(&host).await?;
        self.forget_macs();
        self.db.host(name).await
    }

    /// Hosts changed: the MAC hints go.
    pub(super) fn forget_macs(&self) {
        let mut macs = lock(&self.macs);
        macs.generation += 1;
        macs.entries.clear();
    }

    /// Removes a host; refused while it has a task not over.
    pub async fn delete_host(&self, name: &str) -> Result<()> {
        self.forget_macs();
        self.db.host(name).await?;
        if let Some(task) = self.db.open_task_for_host(name).await? {
            return Err(Error::conflict(
                "host",
                name,
                format!("task {} is not over: cancel it first", task.id),
            ));
        }
        self.db.delete_host(name).await
    }

    /// Quick registration from the boot menu: creates the host of these MACs (named `name`, else
    /// after its DMI serial, else `host-<mac>`; imaged by the calling node), or, when one of the
    /// MACs is known, stores the new inventory (and the UUID and MACs it lacked) on that host.
    /// Registering twice changes nothing more. A node may not touch another node's host.
    pub async fn register(&self, caller: &Caller, reg: &Registration) -> Result<Registered> {
        let mut macs = Vec::new();
        for mac in &reg.macs {
            let mac = canonical_mac(mac)?;
            if !macs.contains(&mac) {
                macs.push(mac);
            }
        }
        let first = macs
            .first()
            .cloned()
            .ok_or_else(|| Error::invalid("mac", "", "a registration needs at least one MAC"))?;
        let dmi = &reg.inventory["dmi"];
        let uuid = match reg.uuid.as_deref().or(dmi["uuid"].as_str()) {
            Some(u) => Some(canonical_uuid(u)?),
            None => None,
        };
        // One registration at a time: two boots of the same machine must not both create it.
        let _line = self.line.lock().await;
        let mut known = None;
        for mac in &macs {
            match self.db.host_by_mac(mac).await {
                Ok(host) => {
                    known = Some(host);
                    break;
                }
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(mut host) = known {
            if let (Some(me), Some(owner)) = (caller.node(), &host.node)
                && me != owner
            {
                return Err(Error::Forbidden(format!(
                    "host {} belongs to node {owner}, not to node {me}",
                    host.name
                )));
            }
            for mac in macs {
                if !host.macs.contains(&mac) {
                    host.macs.push(mac);
                }
            }
            if host.uuid.is_none() {
                host.uuid = uuid;
            }
            if !reg.inventory.is_null() {
                host.inventory = reg.inventory.clone();
            }
            let name = host.name.clone();
            let host = self.update_host(&name, host).await?;
            return Ok(Registered { host, created: false });
        }
        let node = caller.node().map(str::to_string);
        let name = match &reg.name {
            Some(name) => name.clone(),
            None => {
                let mut name = format!("host-{}", first.replace(':', ""));
                if let Some(serial) = dmi["serial"].as_str().and_then(name_from_serial)
                    && matches!(self.db.host(&serial).await, Err(Error::NotFound { .. }))
                {
                    name = serial;
                }
                name
            }
        };
        let host = Host {
            uuid,
            node,
            inventory: reg.inventory.clone(),
            ..Host::new(name, macs)
        };
        let host = self.create_host(host).await?;
        // It waits on the registrations page until someone approves it.
        self.db.set_host_pending(&host.name, true).await?;
        Ok(Registered { host, created: true })
    }

    /// How many hosts `query` selects (all pages).
    pub async fn host_count(&self, query: &HostQuery) -> Result<u64> {
        query.validate()?;
        self.db.hosts_count(query).await
    }

    /// When each of these hosts was last imaged and last heard from.
    pub async fn host_activity(&self, hosts: &[String]) -> Result<std::collections::HashMap<String, HostActivity>> {
        self.db.host_activity(hosts).await
    }

    /// Whether a host registered itself from the boot menu and waits for approval.
    pub async fn is_pending(&self, name: &str) -> Result<bool> {
        self.db.host_pending(name).await
    }

    /// Approves a host that registered itself from the boot menu, giving it an image and a
    /// group (each when given).
    pub async fn approve_host(&self, name: &str, approval: &Approval) -> Result<Host> {
        let mut host = self.host(name).await?;
        if let Some(image) = &approval.image {
            host.image = Some(image.clone());
        }
        if let Some(group) = &approval.group {
            host.group = Some(group.clone());
        }
        let host = self.update_host(name, host).await?;
        self.db.set_host_pending(name, false).await?;
        Ok(host)
    }

    /// The node that images `host`: the one set on it, else the enabled node whose subnet holds
    /// `address` (or the host's address), the longest prefix winning.
    pub async fn node_for(&self, host: &Host, address: Option<Ipv4Addr>) -> Result<Option<String>> {
        self.node_for_parts(host.node.as_deref(), address.or(host.address))
            .await
    }

    pub(super) async fn node_for_parts(&self, node: Option<&str>, address: Option<Ipv4Addr>) -> Result<Option<String>> {
        if let Some(node) = node {
            return Ok(Some(node.to_string()));
        }
        let Some(address) = address else {
            return Ok(None);
        };
        Ok(self
            .db
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.enabled)
            .filter_map(|n| n.matches(address).map(|prefix| (prefix, n.name)))
            .max_by_key(|(prefix, _)| *prefix)
            .map(|(_, name)| name))
    }
}
