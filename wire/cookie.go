package wire

// Cookie is what a node sends an address that asks it for more than it
// sent before that address has proved that it receives what is sent to
// it: a [KindCookie] instead of the answer. The address proves itself by
// sending the cookie back, unchanged, in a [KindCookieEcho]. Both are a
// header alone, the cookie in its count and seq fields, so neither is
// larger than the smallest datagram there is, the one that asked for it
// included. See "Return routability" in FORMAT.md.
type Cookie struct {
	// Slot is the low 16 bits of the number of the issuer's time slot:
	// the issuer's secret changes from slot to slot.
	Slot uint16
	// Tag binds the cookie to the address it was sent to and to the
	// issuer's secret of the slot; only the issuer can check it.
	Tag uint64
}

// Header returns the header of a datagram of kind k, [KindCookie] or
// [KindCookieEcho], that carries c and is sent by node in epoch. Encode it
// with [Header.AppendTo]; nothing follows it.
func (c Cookie) Header(k Kind, node uint32, epoch uint64) Header {
	return Header{Kind: k, Count: c.Slot, Node: node, Epoch: epoch, Seq: c.Tag}
}

// Unmarshal takes the cookie from the header h of a datagram and its
// body. It returns [ErrBadKind] unless h is a [KindCookie] or a
// [KindCookieEcho], and [ErrBadLength] if the body is not empty.
func (c *Cookie) Unmarshal(h *Header, body []byte) error {
	switch {
	case h.Kind != KindCookie && h.Kind != KindCookieEcho:
		return ErrBadKind
	case len(body) > 0:
		return ErrBadLength
	}
	*c = Cookie{Slot: h.Count, Tag: h.Seq}
	return nil
}
