package alert

// DecodeDefender decodes an MDE API v1 alert or a Graph alerts_v2 alert: a
// single object, an array of them, or an OData envelope {"value":[...]}.
func DecodeDefender(body []byte) (Batch, error) {
	return Batch{}, &DecodeError{Msg: "defender decoder is being written"}
}
