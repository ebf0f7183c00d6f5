package broker

import "github.com/prometheus/client_golang/prometheus"

// authMetrics are the access hook's counters.
type authMetrics struct {
	logins   *prometheus.CounterVec
	failures *prometheus.CounterVec
	delayed  prometheus.Counter
	denied   *prometheus.CounterVec
	revoked  prometheus.Counter
	expired  prometheus.Counter
	presence *prometheus.CounterVec
	wills    *prometheus.CounterVec
	purged   prometheus.Counter
	// subsRefused: filters refused for mqtt.max_subscriptions_per_client.
	subsRefused prometheus.Counter
	// levelsRefused: filters refused for
	// mqtt.max_subscription_levels_per_client.
	levelsRefused prometheus.Counter
	// overBound: sessions restored at start-up holding more than a
	// subscription bound allows, by limit (auth_sublevels.go).
	overBound *prometheus.CounterVec
}

func newAuthMetrics() *authMetrics {
	return &authMetrics{
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_auth_logins_total", Help: "MQTT logins accepted, by kind (device, user, anonymous) and transport.",
		}, []string{"kind", "transport"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_auth_failures_total", Help: "MQTT logins refused, by reason (bad_credentials, no_credentials, client_id, session_owner, will, throttled, banned) and transport.",
		}, []string{"reason", "transport"}),
		delayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_auth_failures_delayed_total", Help: "MQTT logins held because their name and address, or their address, had failed too often (the login limiter shared with the HTTP API).",
		}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_acl_denied_total", Help: "Publishes and subscriptions/deliveries the ACL refused.",
		}, []string{"action"}),
		revoked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_auth_revoked_disconnects_total", Help: "Clients disconnected because their device or user was disabled, deleted or re-keyed.",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_auth_expired_disconnects_total", Help: "Clients disconnected because the session or API token they connected with expired.",
		}),
		presence: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_device_presence_total", Help: "Device presence changes published, by state (online, offline).",
		}, []string{"state"}),
		wills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_auth_wills_refused_total", Help: "Will messages refused, by when (connect: the CONNECT was refused; send: the will was dropped as the client went, or while it waited out its delay as its session was purged).",
		}, []string{"when"}),
		purged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_sessions_purged_total", Help: "Sessions purged because their device was deleted or disabled or their user deleted, or because nobody owned them.",
		}),
		subsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_mqtt_subscriptions_refused_total", Help: "SUBSCRIBE filters refused (0x97 quota exceeded; 3.1.1: 0x80) because the client's session held mqtt.max_subscriptions_per_client subscriptions.",
		}),
		levelsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_mqtt_subscription_levels_refused_total", Help: "SUBSCRIBE filters refused (0x97 quota exceeded; 3.1.1: 0x80) because the levels of the topic index the client's session's filters need would pass mqtt.max_subscription_levels_per_client.",
		}),
		overBound: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_mqtt_sessions_over_subscription_bound_total", Help: "Sessions restored at start-up that held more than a subscription bound allows (it was lowered since), by limit (max_subscriptions_per_client, max_subscription_levels_per_client): they keep their filters, and new ones are refused until they are back under it.",
		}, []string{"limit"}),
	}
}

func (m *authMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.logins, m.failures, m.delayed, m.denied, m.revoked, m.expired, m.presence, m.wills, m.purged, m.subsRefused, m.levelsRefused, m.overBound}
}

// Describe implements prometheus.Collector.
func (a *Auth) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range a.m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (a *Auth) Collect(ch chan<- prometheus.Metric) {
	for _, c := range a.m.collectors() {
		c.Collect(ch)
	}
}
