"""QBO's error bodies, exactly in its shape: ``{"Fault": {"Error": [...], "type": ...}, "time": ...}``."""

from __future__ import annotations

import datetime as dt
from typing import Any


def qbo_time() -> str:
    """QBO stamps responses with local time and offset, e.g. 2017-09-29T09:17:31.892-07:00."""
    now = dt.datetime.now(dt.timezone(dt.timedelta(hours=-8)))
    return now.isoformat(timespec="milliseconds")


class QboFault(Exception):
    """A Fault the sandbox answers with. ``status`` is the HTTP status."""

    def __init__(self, code: str | int, message: str, detail: str = "", *, status: int = 400,
                 fault_type: str = "ValidationFault", element: str = "") -> None:
        super().__init__(f"{code} {message}: {detail}")
        self.code = str(code)
        self.message = message
        self.detail = detail
        self.status = status
        self.fault_type = fault_type
        self.element = element

    def fault_body(self) -> dict[str, Any]:
        return {
            "Error": [{"Message": self.message, "Detail": self.detail, "code": self.code, "element": self.element}],
            "type": self.fault_type,
        }

    def to_json(self) -> dict[str, Any]:
        return {"Fault": self.fault_body(), "time": qbo_time()}


def validation(code: int, message: str, detail: str, element: str = "") -> QboFault:
    return QboFault(code, message, detail, element=element)


def required(field: str) -> QboFault:
    return validation(2020, "Required param missing, need to supply the required value for the API",
                      f"Required parameter {field} is missing in the request", field)


def object_not_found(entity: str, ident: str) -> QboFault:
    return validation(610, "Object Not Found",
                      f"Object Not Found : Something you're trying to use has been made inactive. "
                      f"Check the fields with accounts, customers, items, vendors or employees. ({entity} {ident})")


def invalid_reference(field: str, ident: str) -> QboFault:
    return validation(2500, "Invalid Reference Id", f"Invalid Reference Id : {field} {ident} does not exist", field)


def string_too_long(field: str, maximum: int) -> QboFault:
    return validation(2050, "Invalid String Length",
                      f"String length is either shorter or longer than supported by specification. "
                      f"Min:0 Max:{maximum} supported. Supplied length:>{maximum}", field)


def duplicate_name(name: str) -> QboFault:
    return validation(6240, "Duplicate Name Exists Error",
                      f"The name supplied already exists. : Another customer, vendor or employee is already "
                      f"using this name ({name}). Please use a different name.")


def duplicate_doc_number(doc: str) -> QboFault:
    return validation(6140, "Duplicate Document Number Error",
                      f"Duplicate Document Number Error : You must specify a different number. "
                      f"This number has already been used. DocNumber={doc}")


def stale_object(entity: str) -> QboFault:
    return validation(5010, "Stale Object Error",
                      "Stale Object Error : You and ttsync-sandbox were working on this at the same time. "
                      f"ttsync-sandbox finished before you did, so your work was not saved. ({entity})")


def business(message: str) -> QboFault:
    return validation(6000, "A business validation error has occurred while processing your request",
                      f"Business Validation Error: {message}")


def invalid_enum(field: str, value: Any) -> QboFault:
    return validation(2170, "Invalid Enumeration", f"Invalid Enumeration : {value} for {field}", field)


def duplicate_request_id(request_id: str) -> QboFault:
    return validation(600, "Duplicate Request ID",
                      f"Request ID {request_id} already exists. Our system detected the duplicate.")


def authentication_failed() -> QboFault:
    return QboFault(3200, "message=AuthenticationFailed; errorCode=003200; statusCode=401",
                    "Token expired or invalid", status=401, fault_type="AuthenticationFault")


def throttle_xml() -> str:
    # QBO often answers a throttled call in XML even when JSON was asked for.
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<IntuitResponse xmlns="http://schema.intuit.com/finance/v3" time="' + qbo_time() + '">'
        '<Fault type="SERVICE"><Error code="3001"><Message>message=ThrottleExceeded; errorCode=003001; '
        "statusCode=429</Message><Detail>The request limit was reached.  Try again later</Detail></Error>"
        "</Fault></IntuitResponse>"
    )


def system_fault(status: int) -> QboFault:
    return QboFault(10000, "An application error has occurred while processing your request",
                    "System Failure Error: An unexpected error occurred while accessing or saving your data. "
                    "Please wait a few minutes and try again.", status=status, fault_type="SystemFault")
