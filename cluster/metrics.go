package cluster

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

type metrics struct {
	sent, received prometheus.Counter
	dropped        *prometheus.CounterVec
	notDurable     prometheus.Counter
	// Flow control (flow.go).
	flowWaits, flowWaited, flowTimeouts prometheus.Counter
	// busLost counts the bus connection's losses.
	busLost prometheus.Counter
	// retainedDeep counts retained copies from other nodes refused for
	// mqtt.max_topic_levels (retained.go).
	retainedDeep prometheus.Counter
}

// dropReasons are tether_cluster_messages_dropped_total's reasons.
var dropReasons = []string{"send", "slow", "malformed", "loop", "inject", "encode", "lost", "topic_levels"}

func newMetrics() *metrics {
	m := &metrics{
		sent: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_cluster_messages_sent_total",
			Help: "Messages sent to other nodes over the cluster bus (one per receiving node)."}),
		received: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_cluster_messages_received_total",
			Help: "Messages from other nodes delivered into this node's engine."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tether_cluster_messages_dropped_total",
			Help: "Bus messages lost, by reason: send, slow (this node fell behind), malformed, loop, inject, encode, lost (not sent to a node taken for gone that was heard again: alive, late), topic_levels (refused here: more topic levels than mqtt.max_topic_levels)."}, []string{"reason"}),
		notDurable: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_cluster_acks_not_durable_total",
			Help: "QoS 1/2 messages for persistent sessions on other nodes acknowledged before every such node confirmed their commit (it did not answer within 2 s, or was gone from the bus)."}),
		flowWaits: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_cluster_flow_waits_total",
			Help: "Publishes held back because another node had not yet taken in what this node sent it (its credit window, or the room for durable requests to it)."}),
		flowWaited: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_cluster_flow_wait_seconds_total",
			Help: "Time publishers were held back for other nodes."}),
		flowTimeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_cluster_flow_timeouts_total",
			Help: "Waits for another node that did not take in messages within mqtt.backpressure_wait; it is not waited for again until it answers."}),
		retainedDeep: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_cluster_retained_deep_refused_total",
			Help: "Retained messages copied from another node that were refused: more topic levels than mqtt.max_topic_levels."}),
		busLost: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_cluster_bus_lost_total",
			Help: "Times this node's connection to the cluster bus was lost (the NATS server closed it, for one as a slow consumer, or the network failed); messages in flight to or from this node then may be lost."}),
	}
	for _, r := range dropReasons {
		m.dropped.WithLabelValues(r)
	}
	return m
}

// Describe implements prometheus.Collector.
func (n *Node) Describe(ch chan<- *prometheus.Desc) {
	n.m.sent.Describe(ch)
	n.m.received.Describe(ch)
	n.m.dropped.Describe(ch)
	n.m.notDurable.Describe(ch)
	n.m.flowWaits.Describe(ch)
	n.m.flowWaited.Describe(ch)
	n.m.flowTimeouts.Describe(ch)
	n.m.busLost.Describe(ch)
	n.m.retainedDeep.Describe(ch)
	ch <- nodesDesc
	ch <- busUpDesc
}

// Collect implements prometheus.Collector.
func (n *Node) Collect(ch chan<- prometheus.Metric) {
	n.m.sent.Collect(ch)
	n.m.received.Collect(ch)
	n.m.dropped.Collect(ch)
	n.m.notDurable.Collect(ch)
	n.m.flowWaits.Collect(ch)
	n.m.flowWaited.Collect(ch)
	n.m.flowTimeouts.Collect(ch)
	n.m.busLost.Collect(ch)
	n.m.retainedDeep.Collect(ch)
	ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(len(*n.peers.Load())+1))
	up := 0.0
	if n.busUp() == nil {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(busUpDesc, prometheus.GaugeValue, up)
}

var nodesDesc = prometheus.NewDesc("tether_cluster_nodes", "Nodes this node hears, itself included.", nil, nil)

var busUpDesc = prometheus.NewDesc("tether_cluster_bus_up", "1 while this node's connection to the cluster bus is up.", nil, nil)

// SentCounter is tether_cluster_messages_sent_total (for measurements).
func (n *Node) SentCounter() prometheus.Counter { return n.m.sent }

// Dropped is the sum of tether_cluster_messages_dropped_total's reasons
// (for measurements).
func (n *Node) Dropped() float64 {
	var sum float64
	for _, r := range dropReasons {
		var m dto.Metric
		if n.m.dropped.WithLabelValues(r).Write(&m) == nil {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// BusLost is tether_cluster_bus_lost_total (for tests and measurements).
func (n *Node) BusLost() float64 {
	var m dto.Metric
	_ = n.m.busLost.Write(&m)
	return m.GetCounter().GetValue()
}

// FlowWaitsCounter is tether_cluster_flow_waits_total (for tests and
// measurements).
func (n *Node) FlowWaitsCounter() prometheus.Counter { return n.m.flowWaits }
