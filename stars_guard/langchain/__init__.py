"""The LangChain layer: `STARSChatModel`, the statistics callback handler and segment event dispatch.

Needs langchain-core (`pip install 'stars-guard[langchain]'`); nothing outside this package imports it.
"""

from stars_guard.langchain.callbacks import STARS_SEGMENT_EVENT, RejectionStatsHandler
from stars_guard.langchain.chat_model import STARSChatModel

__all__ = ["STARS_SEGMENT_EVENT", "RejectionStatsHandler", "STARSChatModel"]
