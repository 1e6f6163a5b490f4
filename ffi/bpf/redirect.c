// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
//
// In-kernel XDP redirect: the forwarding ceiling an in-kernel XDP
// dataplane (Cilium-like) reaches on this machine's veths. Used only by the
// benchmark harness (`kxdp-bench --modes xdp-redirect`), never by kxdp.
//
// Two entry points:
//
//   redirect_fwd   attached to an ingress interface that has a forwarding
//                  entry (`fwd_macs` + `fwd_ports`, both keyed by the
//                  ingress ifindex): rewrites the Ethernet source and
//                  destination to the entry's MACs and redirects the frame
//                  with bpf_redirect_map() through the DEVMAP_HASH
//                  `fwd_ports` to the entry's egress interface. Nothing
//                  else: no parsing beyond the Ethernet header, no DNAT, no
//                  encapsulation, no conntrack. An ingress interface
//                  without an entry passes its frames to the kernel.
//   redirect_pass  XDP_PASS, counted. A veth only offers ndo_xdp_xmit
//                  (xdp_features NDO_XMIT) while its *peer* has NAPI
//                  enabled, which takes an XDP program (or GRO) on that
//                  peer; otherwise every redirect into it fails and the
//                  frame is dropped, counted as a receive drop of the
//                  *ingress* veth (ethtool rx_queue_N_drops, ip -s RX
//                  dropped; its rx_queue_N_xdp_redirect stays 0). This is
//                  that program; its counter also tells how many
//                  redirected frames reached the far side.
//
// The DEVMAP lookup's fallback action is XDP_DROP: a forwarding entry
// whose port is missing drops (counted) rather than handing the frame to
// the kernel, which would measure something else.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

#define KXDP_REDIRECT_MAX_PORTS 64

// Stats slots. Keep in sync with `RedirectStats` in ffi/src/redirect.rs.
enum kxdp_redirect_stat {
	STAT_FWD_REDIRECT = 0,   // redirect_fwd: handed to bpf_redirect_map
	STAT_FWD_NO_PORT = 1,    // redirect_fwd: entry without port: dropped
	STAT_FWD_NO_ENTRY = 2,   // redirect_fwd: no entry: passed
	STAT_FWD_RUNT = 3,       // redirect_fwd: shorter than Ethernet: dropped
	STAT_PEER_PASS = 4,      // redirect_pass: passed
	STAT_MAX = 5,
};

// MACs written into a forwarded frame.
struct kxdp_fwd_macs {
	__u8 src[ETH_ALEN];
	__u8 dst[ETH_ALEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, KXDP_REDIRECT_MAX_PORTS);
	__type(key, __u32);   // ingress ifindex
	__type(value, __u32); // egress ifindex
} fwd_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KXDP_REDIRECT_MAX_PORTS);
	__type(key, __u32); // ingress ifindex
	__type(value, struct kxdp_fwd_macs);
} fwd_macs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} redirect_stats SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&redirect_stats, &slot);

	if (v)
		*v += 1;
}

SEC("xdp")
int redirect_fwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 key = ctx->ingress_ifindex;
	struct kxdp_fwd_macs *macs;
	long action;

	if ((void *)(eth + 1) > data_end) {
		count(STAT_FWD_RUNT);
		return XDP_DROP;
	}
	macs = bpf_map_lookup_elem(&fwd_macs, &key);
	if (!macs) {
		count(STAT_FWD_NO_ENTRY);
		return XDP_PASS;
	}
	__builtin_memcpy(eth->h_dest, macs->dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, macs->src, ETH_ALEN);
	action = bpf_redirect_map(&fwd_ports, key, XDP_DROP);
	count(action == XDP_REDIRECT ? STAT_FWD_REDIRECT : STAT_FWD_NO_PORT);
	return action;
}

SEC("xdp")
int redirect_pass(struct xdp_md *ctx)
{
	count(STAT_PEER_PASS);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
