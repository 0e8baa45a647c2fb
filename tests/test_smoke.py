from mailsvc import Mail, MailConfig, Message
from tests.servers import RecordingHandler


async def test_send_plain(smtp_port: int, handler: RecordingHandler) -> None:
    mail = Mail(config=MailConfig(server="127.0.0.1", port=smtp_port, default_sender="me@example.com"))
    result = await mail.send(Message("Hi", recipients=["a@example.com"], body="hello"))
    assert result.ok
    assert handler.received[0].message["Subject"] == "Hi"
    results = await mail.send_many([Message(f"n{i}", recipients=[f"u{i}@example.com"], body="x") for i in range(20)])
    assert all(r.ok for r in results) and len(handler.received) == 21
    await mail.state.aclose()
