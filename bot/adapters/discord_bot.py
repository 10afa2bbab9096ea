"""The Discord adapter: mentions, DMs and slash commands become Turns; Reply becomes REST calls.

discord.py with the intents guilds, guild_messages and dm_messages. No privileged
intent is needed: Discord sends a message's content to a bot it mentions, and in DMs.
discord.py runs each event in its own task, so the gateway never waits for the work.

Conversations: a channel or thread ``discord:channel:<id>`` (a thread is its own channel),
a DM ``discord:dm:<user id>``; the bot answers in place. A message is handed to the core
as its event arrives, its attachments fetched in its turn, so a conversation keeps the
order messages were sent. Slash commands are deferred at once, then answered with
followups; admin commands, and /help, only to the asker (ephemeral). Status edits of a
guild share one budget.

The buttons under posted images (``discord_buttons.py``) are answered by ``on_button``
and ``on_form``: the core decides, this side acknowledges and carries it out. Every press
is answered within Discord's 3 s, an older version's button too (``on_interaction``).
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import re
from collections.abc import Sequence

import aiohttp
import discord
from discord import app_commands

from core.commands import Command
from core.engine import Core
from core.errors import ELSEWHERE, GENERIC, OLD_BUTTON, BadImage
from core.turn import Attachment, EditBudget, Turn, clean_name
from settings.units import mib

from bot.adapters.discord_buttons import EditForm, cancel_of, custom_id, form_of, pressed_of
from bot.adapters.discord_commands import add_commands, attached
from bot.adapters.discord_reply import (DM_UPLOAD_LIMIT, EDIT_BURST, EDITS_PER_MINUTE, ChannelReply,
                                        InteractionReply)

log = logging.getLogger(__name__)
ANSWERED = (discord.MessageType.default, discord.MessageType.reply)  # not joins, pins, thread notices


class DiscordRejected(RuntimeError):
    """Discord refused the token or the connection; the message says what to check."""


def _roles(member) -> tuple[str, ...]:
    """A guild member's role ids, @everyone's (the guild's id) among them; none for a DM's user."""
    return tuple(str(r.id) for r in getattr(member, "roles", ()))


def _age_restricted(channel) -> bool:
    """Discord's age-restricted (NSFW) mark; a thread has its parent's (discord.py's ``is_nsfw``), a DM none."""
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


# --- the bot -----------------------------------------------------------------------------------


class _Client(discord.Client):
    def __init__(self, bot: DiscordBot, **options):
        super().__init__(**options)
        self.bot = bot
        self.tree = app_commands.CommandTree(self)

    async def setup_hook(self) -> None:
        try:
            await self.tree.sync()
        except discord.HTTPException as e:  # mentions and DMs still work without them
            log.warning("could not register the slash commands with Discord: %s", e)

    async def on_message(self, message: discord.Message) -> None:
        await self.bot.on_message(message)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        await self.bot.on_interaction(interaction)  # buttons and the Edit form; commands go to the tree

    async def on_error(self, event_method: str, /, *args, **kwargs) -> None:
        log.exception("Discord event handler %s failed", event_method)


class DiscordBot:
    """The discord.py client, its slash commands, and the translation to and from the core."""

    def __init__(self, core: Core, config, *, guild_ready_timeout: float = 2.0):
        self.core, self.cfg, self.limits = core, config.discord, config.limits
        intents = discord.Intents.none()
        intents.guilds = intents.guild_messages = intents.dm_messages = True
        # the LLM's text never pings @everyone, roles or users; only the asker, on the answer
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=False, replied_user=True)
        self.client = _Client(self, intents=intents, allowed_mentions=mentions, max_messages=None,
                              guild_ready_timeout=guild_ready_timeout)
        self.client.tree.on_error = self._on_command_error
        add_commands(self.client.tree, self._command, self._suggestions, self.limits)
        self._connection: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._budgets: dict[int | None, EditBudget] = {}  # per guild (None: DMs)

    def budget(self, guild_id: int | None) -> EditBudget:
        if guild_id not in self._budgets:
            self._budgets[guild_id] = EditBudget(EDITS_PER_MINUTE, EDIT_BURST)
        return self._budgets[guild_id]

    # --- connection ----------------------------------------------------------------------

    async def start(self, *, ready_timeout: float = 60.0) -> None:
        """Log in, register the slash commands, connect; raises DiscordRejected in bounded time."""
        token, where = self.cfg.token, f"${self.cfg.token_env}"
        if not token:
            raise DiscordRejected(f"no Discord bot token: set the environment variable {where}")
        try:
            await self.client.login(token)
        except discord.LoginFailure:
            raise DiscordRejected(f"Discord rejected the bot token in {where}; copy it again from the "
                                  "Developer Portal (Bot > Reset Token)") from None
        except (discord.HTTPException, aiohttp.ClientError, OSError) as e:
            raise DiscordRejected(f"could not reach Discord to log in: {e or type(e).__name__}") from None
        # reconnect=True: lost connections are resumed with discord.py's backoff
        self._connection = asyncio.create_task(self.client.connect(reconnect=True))
        ready = asyncio.create_task(self.client.wait_until_ready())
        await asyncio.wait({self._connection, ready}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            if self._connection.done():
                await self.serve()  # raises the reason
            raise DiscordRejected(f"the Discord gateway did not get ready in {ready_timeout:.0f} s")
        log.info("connected to Discord as %s (id %s)", self.client.user, self.client.user.id)

    async def serve(self) -> None:
        """Until the connection ends: returns when closed, raises DiscordRejected when Discord ends it."""
        try:
            await self._connection
        except discord.PrivilegedIntentsRequired:
            raise DiscordRejected("Discord refused the intents this bot asked for") from None
        except discord.ConnectionClosed as e:
            if e.code == 4004:
                raise DiscordRejected(f"Discord rejected the bot token in ${self.cfg.token_env}") from None
            raise DiscordRejected(f"Discord closed the connection (code {e.code}: {e.reason})") from None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.client.close()
        if self._connection is not None:
            await asyncio.gather(self._connection, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until the work in flight is answered (tests, a graceful stop)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _track(self) -> None:
        """The current task (discord.py made it for the event) does work for a user."""
        task = asyncio.current_task()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- messages ---------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        me = self.client.user
        if message.author.bot or message.type not in ANSWERED:
            return  # ourselves, other bots, system messages
        if message.guild is None:
            session = f"discord:dm:{message.author.id}"
        elif any(u.id == me.id for u in message.mentions):
            session = f"discord:channel:{message.channel.id}"
        else:
            return
        self._track()
        text = re.sub(rf"<@!?{me.id}>", "", message.content).strip()
        limit = message.guild.filesize_limit if message.guild else DM_UPLOAD_LIMIT
        reply = ChannelReply(message, limit, self.budget(message.guild.id if message.guild else None))
        author = message.author
        is_admin = self._is_admin(author.id, getattr(author, "guild_permissions", None))
        turn = Turn("discord", session, str(author.id), author.display_name, text,
                    self._attachments(message.attachments), is_admin, nsfw_channel=_age_restricted(message.channel),
                    channel=str(message.channel.id), is_dm=message.guild is None, roles=_roles(author))
        try:
            await self.core.handle(turn, reply)  # the first await: the message's place is taken at once
        except discord.Forbidden as e:  # the channel's permissions, not a bug: one line for the admin
            log.warning("no permission to answer in %s (%s): %s", message.channel, session, e)
        except Exception:
            await self._failed(reply, session)
        finally:
            await reply.close()

    def _attachments(self, attachments: Sequence[discord.Attachment]) -> tuple[Attachment, ...]:
        """Uploads for the core to fetch in the message's turn (the signed CDN links last a day)."""
        limit = self.limits.max_upload_bytes

        async def fetch(a: discord.Attachment) -> bytes:
            name = clean_name(a.filename)
            if a.size > limit:  # refused before fetching
                raise BadImage(f"I could not use {name}: it is larger than the {mib(limit)} limit.")
            try:
                return await a.read()
            except (discord.HTTPException, aiohttp.ClientError) as e:
                log.warning("download of attachment %s failed: %s", a.id, e)
                raise BadImage(f"I could not download {name} from Discord; please send it again.") from None

        return tuple(Attachment(a.filename, (a.content_type or mimetypes.guess_type(a.filename)[0]
                                             or "application/octet-stream").split(";")[0], fetch=lambda a=a: fetch(a))
                     for a in attachments)

    async def _failed(self, reply: ChannelReply | InteractionReply, where: str) -> None:
        log.exception("Discord reply in %s failed", where)
        try:
            await reply.send(GENERIC)
        except Exception:
            log.warning("could not tell the user in %s either", where)

    # --- slash commands ---------------------------------------------------------------------

    async def _suggestions(self, command: str, arg: str, typed: str) -> list[str]:
        return await self.core.suggestions(command, arg, typed)

    def _session(self, interaction: discord.Interaction) -> str:
        if interaction.guild_id is None:
            return f"discord:dm:{interaction.user.id}"
        return f"discord:channel:{interaction.channel_id}"

    def _turn(self, interaction: discord.Interaction, files: tuple[Attachment, ...] = ()) -> Turn:
        user = interaction.user
        command = interaction.command.name if interaction.command else "?"
        options = " ".join(f"{o['name']}={o.get('value')}" for o in (interaction.data or {}).get("options", []))
        return Turn("discord", self._session(interaction), str(user.id), user.display_name,
                    f"/{command} {options}".strip(), files, self._is_admin(user.id, interaction.permissions),
                    nsfw_channel=_age_restricted(interaction.channel), channel=str(interaction.channel_id),
                    is_dm=interaction.guild_id is None, roles=_roles(user))

    def _is_admin(self, user_id: int, permissions: discord.Permissions | None) -> bool:
        """Manage Server in this guild (Discord folds Administrator in), or listed in discord.admin_ids."""
        if str(user_id) in self.cfg.admin_ids:
            return True
        return bool(permissions and (permissions.manage_guild or permissions.administrator))

    async def _direct(self, interaction: discord.Interaction, tool: str, args: dict,
                      images: Sequence[discord.Attachment] = ()) -> None:
        await interaction.response.defer(thinking=True)
        self._track()
        reply = InteractionReply(interaction, budget=self.budget(interaction.guild_id))
        try:
            files = self._attachments(images)
            await self.core.direct(self._turn(interaction, files), reply, tool, args)
        except Exception:
            await self._failed(reply, self._session(interaction))
        finally:
            await reply.close()

    async def _command(self, interaction: discord.Interaction, command: Command, options: dict) -> None:
        files = attached(options)  # the image's, then the references'
        args = {k: str(v.id) if isinstance(v, discord.abc.User) else v for k, v in options.items() if v is not None}
        if command.tool:
            return await self._direct(interaction, command.tool, args, files)
        await interaction.response.defer(thinking=True, ephemeral=command.private)
        self._track()
        text = await self.core.command(self._turn(interaction), command.name, args)
        await InteractionReply(interaction, ephemeral=command.private).send(text)

    async def _on_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        name = interaction.command.name if interaction.command else "?"
        log.error("Discord command /%s failed", name, exc_info=error)
        try:
            if interaction.response.is_done():
                await interaction.followup.send(GENERIC, ephemeral=True)
            else:
                await interaction.response.send_message(GENERIC, ephemeral=True)
        except discord.HTTPException:
            log.warning("could not tell the user about the failed /%s either", name)


    # --- buttons under images (discord_buttons.py) ------------------------------------------

    async def on_button(self, interaction: discord.Interaction, action: str, image: str, tag: str,
                        session: str) -> None:
        """A press: answered at once, only to the presser (Info, a stale or disabled button), with the Edit
        form (a modal), or acknowledged without a message (type 6) and run, the result a new reply."""
        if session != self._session(interaction):
            return await interaction.response.send_message(ELSEWHERE, ephemeral=True)
        press = await self.core.press(session, image, tag, action, self._presser(interaction, session))
        if press.kind == "private":
            await interaction.response.send_message(press.text, ephemeral=True)
        elif press.kind == "form":
            form_id = custom_id("vcform", action, image, tag, session)
            await interaction.response.send_modal(EditForm(press.text, press.field, press.hint, form_id))
        else:
            await interaction.response.defer()
            await self._act(interaction, session, image, tag, action)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """A press or a submitted form, read from its custom_id (nothing about either is kept in memory); one
        this version does not know, an older version's, is answered too: no "This interaction failed"."""
        if interaction.type is discord.InteractionType.modal_submit:
            return await self.on_form(interaction)
        if interaction.type is not discord.InteractionType.component:
            return
        if (cancel := cancel_of(interaction)) is not None:
            return await self.on_cancel(interaction, cancel["token"], cancel["session"])
        pressed = pressed_of(interaction)
        if pressed is None:
            return await self._unknown(interaction)
        await self.on_button(interaction, pressed["action"], pressed["image"], pressed["tag"], pressed["session"])

    async def on_cancel(self, interaction: discord.Interaction, token: str, session: str) -> None:
        """A press of Cancel on a progress message: acknowledged without a message (type 6) when the request is
        being cancelled (the conversation is told when it stopped); else told to the presser alone why not."""
        if session != self._session(interaction):
            return await interaction.response.send_message(ELSEWHERE, ephemeral=True)
        user = interaction.user
        turn = Turn("discord", session, str(user.id), user.display_name, "",
                    is_admin=self._is_admin(user.id, interaction.permissions), channel=str(interaction.channel_id),
                    is_dm=interaction.guild_id is None, mention=user.mention)
        refused = await self.core.cancel(token, session, turn)
        if refused is not None:
            return await interaction.response.send_message(refused, ephemeral=True)
        await interaction.response.defer()

    async def _unknown(self, interaction: discord.Interaction) -> None:
        log.info("answered a press of a button this version does not know (%.100s)",
                 (interaction.data or {}).get("custom_id"))
        await interaction.response.send_message(OLD_BUTTON, ephemeral=True)

    async def on_form(self, interaction: discord.Interaction) -> None:
        """A submitted Edit form (MODAL_SUBMIT), read from its custom_id: nothing about it is kept in memory."""
        found = form_of(interaction)
        if found is None:
            return await self._unknown(interaction)
        fields, instruction = found
        session, image, tag, action = fields["session"], fields["image"], fields["tag"], fields["action"]
        if session != self._session(interaction):
            return await interaction.response.send_message(ELSEWHERE, ephemeral=True)
        press = await self.core.press(session, image, tag, action, self._presser(interaction, session))
        if press.kind == "private":  # reset away while the form was open
            return await interaction.response.send_message(press.text, ephemeral=True)
        await interaction.response.defer()
        await self._act(interaction, session, image, tag, action, instruction.strip())

    def _presser(self, interaction: discord.Interaction, session: str) -> Turn:
        user = interaction.user
        return Turn("discord", session, str(user.id), user.display_name, "", (),
                    self._is_admin(user.id, interaction.permissions), nsfw_channel=_age_restricted(interaction.channel),
                    channel=str(interaction.channel_id), is_dm=interaction.guild_id is None, mention=user.mention,
                    roles=_roles(user))

    async def _act(self, interaction: discord.Interaction, session: str, image: str, tag: str, action: str,
                   instruction: str | None = None) -> None:
        """Run the press for the presser; status and result go to the image's channel, replying to its message."""
        self._track()
        reply = ChannelReply(interaction.message, interaction.filesize_limit, self.budget(interaction.guild_id))
        try:
            reply.allowed_mentions = discord.AllowedMentions(users=[interaction.user])  # the answer notifies them
            await self.core.act(self._presser(interaction, session), reply, image, tag, action, instruction)
        except discord.Forbidden as e:
            log.warning("no permission to answer a button in %s: %s", session, e)
        except Exception:
            await self._failed(reply, session)
        finally:
            await reply.close()


async def run(core: Core, config) -> None:
    """Serve Discord until cancelled. A refused token or connection is logged as one clear error
    line and raised as DiscordRejected (no traceback loop): the caller exits with an error code."""
    bot = DiscordBot(core, config)
    try:
        await bot.start()
        await bot.serve()
    except DiscordRejected as e:
        log.error("%s", e)
        raise
    finally:
        await bot.close()
