// Package rules is the grammar of auth.rules (SPEC §5): the Rule an
// operator writes, its who kinds, and the one check that both the
// configuration's validation and the broker's compiler (broker.Rules)
// run. It imports neither the MQTT engine nor the configuration.
package rules
