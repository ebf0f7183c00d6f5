package main

import (
	"github.com/coder/websocket"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/listeners"
)

// wsCompression maps http.ws_compression to coder/websocket's modes.
var wsCompression = map[string]websocket.CompressionMode{
	configs.WSCompressionOff:       websocket.CompressionDisabled,
	configs.WSCompressionNoContext: websocket.CompressionNoContextTakeover,
	configs.WSCompressionContext:   websocket.CompressionContextTakeover,
}

// brokerOptions maps the configuration onto the broker's options; the
// caller adds the logger, TLS, the access hook and the other hooks.
func brokerOptions(cfg configs.Config) broker.Options {
	on := func(addr string) string {
		if addr == configs.Off {
			return ""
		}
		return addr
	}
	m := cfg.MQTT
	return broker.Options{
		AllowAnonymous:  cfg.Auth.AllowAnonymous,
		TCPAddr:         on(m.Addr),
		TLSAddr:         on(m.TLSAddr),
		WebSocket:       cfg.HTTP.Addr != configs.Off,
		SecureWebSocket: cfg.HTTP.HTTPSAddr != configs.Off,

		MaxPacketSize:         m.MaxPacketSize,
		ClientQueueSize:       m.ClientQueueSize,
		ClientQueueBytes:      m.ClientQueueBytes,
		ClientQueueTotalBytes: m.ClientQueueTotalBytes,
		ReceiveMaximum:        m.ReceiveMaximum,
		MaxInflight:           m.MaxInflight,
		MaxSessionExpiry:      m.MaxSessionExpiry,
		MaxMessageExpiry:      m.MaxMessageExpiry,
		SysInterval:           m.SysInterval,
		ConnectTimeout:        m.ConnectTimeout,
		WriteTimeout:          cfg.Limits.WriteTimeout,
		MaxKeepalive:          m.MaxKeepalive,

		MaxSubscriptionsPerClient:      m.MaxSubscriptionsPerClient,
		MaxSubscriptionLevelsPerClient: m.MaxSubscriptionLevelsPerClient,
		MaxTopicLevels:                 m.MaxTopicLevels,
		MaxSessionsPerUser:             m.MaxSessionsPerUser,

		ReadBufferSize:  m.ReadBufferSize,
		WriteBufferSize: m.WriteBufferSize,

		Limits: listeners.LimitOptions{
			MaxConnections:      cfg.Limits.MaxConnections,
			MaxConnectionsPerIP: cfg.Limits.MaxConnectionsPerIP,
			ConnectionRatePerIP: cfg.Limits.ConnectionRatePerIP,
			MaxPendingPerIP:     cfg.Limits.MaxPendingConnectionsPerIP,
		},
		ProxyProtocolFrom: m.ProxyProtocolFrom,
		TrustedProxies:    cfg.HTTP.TrustedProxies,
		PublicURL:         cfg.HTTP.PublicURL,
		AllowedOrigins:    cfg.HTTP.AllowedOrigins,
		WSCompression:     wsCompression[cfg.HTTP.WSCompression],
	}
}

// retainedLimits maps mqtt.max_retained_* onto the retained-limit hook's
// bounds; the caller adds who is a device and logging.
func retainedLimits(cfg configs.Config) broker.RetainedLimitOptions {
	m := cfg.MQTT
	return broker.RetainedLimitOptions{
		MaxMessages: m.MaxRetainedMessages, MaxBytes: m.MaxRetainedBytes,
		DeviceMessages: m.MaxRetainedMessagesPerDevice, DeviceBytes: m.MaxRetainedBytesPerDevice,
	}
}

// telemetryTopics maps telemetry.topics onto the telemetry hook's.
func telemetryTopics(cfg configs.Config) []broker.TelemetryTopic {
	out := make([]broker.TelemetryTopic, len(cfg.Telemetry.Topics))
	for i, t := range cfg.Telemetry.Topics {
		out[i] = broker.TelemetryTopic{Filter: t.Filter, DeviceFrom: t.DeviceFrom}
	}
	return out
}
