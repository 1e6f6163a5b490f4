//! [`PortFactory`] for AF_XDP sockets on the worker's UMEM.

use std::os::fd::OwnedFd;

use super::PortFactory;
use crate::io::afxdp::{AfXdpPort, PortConfig, XskStore};

/// Opens [`AfXdpPort`]s from [`PortConfig`]s. The control side gets a
/// duplicate of the socket's descriptor to put in the steering program's
/// XSKMAP; it must drop it right after (an open duplicate keeps the socket,
/// and so its XSKMAP entry, alive after the worker closes the port).
#[derive(Debug, Default)]
pub struct AfXdpFactory {
    /// Frames lost with closed sockets (left in their fill rings).
    pub frames_lost: u64,
}

impl PortFactory for AfXdpFactory {
    type Store = XskStore;
    type Port = AfXdpPort;
    type Spec = PortConfig;
    type Opened = OwnedFd;

    fn open(
        &mut self,
        store: &mut XskStore,
        spec: &PortConfig,
    ) -> Result<(AfXdpPort, OwnedFd), String> {
        let port = AfXdpPort::open(store, spec).map_err(|e| e.to_string())?;
        let fd = port
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("dup AF_XDP socket of {}: {e}", spec.ifname))?;
        tracing::info!(
            ifname = %spec.ifname,
            queue = spec.queue,
            zero_copy = port.zero_copy(),
            "AF_XDP socket open"
        );
        Ok((port, fd))
    }

    fn close(&mut self, store: &mut XskStore, port: AfXdpPort) {
        let name = port.ifname().to_owned();
        let lost = port.close(store);
        self.frames_lost += u64::from(lost);
        tracing::info!(ifname = %name, frames_lost = lost, "AF_XDP socket closed");
    }
}
