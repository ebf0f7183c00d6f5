package main

import "testing"

func conformMosquitto(t *testing.T, e *conformEnv) {}
