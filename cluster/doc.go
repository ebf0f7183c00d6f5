// Package cluster ties Tether nodes together over NATS so that several
// nodes are one broker (SPEC §10, docs/cluster.md).
//
// Each node runs a NATS server in-process, clustered with the other
// nodes' through its routes (or connects to an external NATS). Over it:
//
//   - messages: a publish accepted on one node (a client's, the broker's
//     own, a will) is sent to each other node that holds a matching
//     subscription (interest-based: every node announces its clients'
//     filters), and injected there into the engine as the inline client
//     would publish it. The MQTT PUBLISH travels encoded as MQTT 5 by the
//     engine's own packets package, so topic, payload, QoS, retain flag
//     and properties arrive as they left; the subject names the node, not
//     the topic, so no MQTT topic needs escaping. A message injected from
//     the bus is never forwarded again: no loops.
//   - retained messages (and their deletion) go to every node, whatever
//     its interest, so each node's retained store answers new
//     subscriptions.
//   - shared subscriptions ($share/group/filter): the node where the
//     message is published serves each matching group with a member of
//     its own; a group with no local member is served by one other node
//     holding it, in turn. Each message reaches each group once.
//   - client ids: a node where a client connects asks the others
//     (Node.Claim); each applies the session owner rules to its own
//     sessions and disconnects a live connection of the same identity.
//   - security (bans.go): each node's refusals (failed logins, ACL
//     denials) count in every node's login throttle and bans; a ban
//     decided on one node, and its lifting, apply on all; a node that
//     joins or comes back takes up the others' bans.
//   - listings (listing.go): GET /clients and /sessions gather every
//     node's, each item naming its node.
//
// The routes of the embedded servers may be TLS with certificates on both
// ends, from one CA (tls.go).
//
// QoS across nodes: NATS core is at most once. A QoS 1 or 2 message is
// acknowledged to its publisher by its own node, then crosses the bus and
// is delivered to each remote subscriber at that subscriber's QoS, with
// the MQTT acknowledgements between that node and its client. While the
// nodes and the routes between them are up, nothing is lost; a message in
// flight when a node or route fails can be. A slow subscriber holds back
// the bus's delivery to its node as it would a local publisher
// (broker.Backpressure), and that node's slowness reaches the publishers
// on the other nodes through a credit window per stream of messages
// between two nodes (flow.go): a publisher whose message would overfill
// the window waits, as for a slow local subscriber, so the receiving
// node's bus buffer never overflows. A node forgets another not heard
// for a while only once it hears the bus itself (a node whose own
// connection is behind hears the others late); one forgotten while it
// was alive, late, is told apart when it is heard again, and the
// messages for its subscribers not sent to it meanwhile are counted
// (peers.go: lostPeer).
package cluster
