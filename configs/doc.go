// Package configs holds Tether's configuration: the defaults, the shipped
// sample configs/tether.yaml that documents every key (embedded, and tested
// to parse to the defaults), and the layering of a YAML file, then TETHER_*
// environment variables, then flags. Validate names the key of any bad value.
package configs
