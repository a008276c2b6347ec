package alert

// DecodeAlertmanager decodes an Alertmanager webhook (version "4") or a
// Grafana webhook (version "1").
func DecodeAlertmanager(body []byte) (Batch, error) {
	return Batch{}, &DecodeError{Msg: "alertmanager decoder is being written"}
}
