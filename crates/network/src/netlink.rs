//! Link up, addresses and the default route over rtnetlink.

use crate::{Error, Result};
use futures_util::TryStreamExt;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};

/// A netlink connection to the kernel's routing subsystem (in this process's namespace).
#[derive(Clone)]
pub struct Net {
    handle: rtnetlink::Handle,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Net")
    }
}

/// Route metric for a link's default route: distinct per link so several links can
/// each have one, lower index preferred.
pub fn metric(index: u32) -> u32 {
    100u32.saturating_add(index)
}

impl Net {
    /// Opens the netlink socket; must be called inside a tokio runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| Error::Socket {
            iface: "netlink".into(),
            source,
        })?;
        tokio::spawn(conn);
        Ok(Net { handle })
    }

    /// Sets the link administratively up.
    pub async fn link_up(&self, iface: &str, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|source| Error::Netlink {
                what: "link up",
                iface: iface.into(),
                source,
            })
    }

    /// Adds (or refreshes) an IPv4 address.
    pub async fn add_address(
        &self,
        iface: &str,
        index: u32,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(addr), prefix)
            .replace()
            .execute()
            .await
            .map_err(|source| Error::Netlink {
                what: "add address",
                iface: iface.into(),
                source,
            })
    }

    /// Removes an IPv4 address (when a lease changes or expires).
    pub async fn del_address(&self, iface: &str, index: u32, addr: Ipv4Addr) -> Result<()> {
        let err = |source| Error::Netlink {
            what: "delete address",
            iface: iface.into(),
            source,
        };
        let mut found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(IpAddr::V4(addr))
            .execute();
        while let Some(msg) = found.try_next().await.map_err(err)? {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(err)?;
        }
        Ok(())
    }

    /// Adds (or replaces) this link's default route through `gw`.
    pub async fn default_route(&self, iface: &str, index: u32, gw: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .priority(metric(index))
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|source| Error::Netlink {
                what: "default route",
                iface: iface.into(),
                source,
            })
    }
}
